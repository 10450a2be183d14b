"""Sets of image ids as sorted int64 arrays: the one implementation of each set operation.

Ids come from the metadata (usually already sorted), from FAISS (any order, ``-1`` as padding) and
from callers. Every set here is a sorted, duplicate-free ``int64`` array; the functions check that
cheaply (O(n)) and only sort when needed, because sorting large id arrays (a filter that selects
most of a collection) is what would cost time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["sorted_unique", "is_sorted_unique", "member", "remove"]


def is_sorted_unique(ids: np.ndarray) -> bool:
    return ids.size < 2 or bool((ids[1:] > ids[:-1]).all())


def sorted_unique(ids: Any) -> np.ndarray:
    """``ids`` as a sorted, duplicate-free int64 array (returned as is when it already is one)."""
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    if is_sorted_unique(arr):
        return arr
    arr = np.sort(arr)  # then drop repeats: faster than np.unique's hashing on large arrays
    return arr[np.concatenate([[True], arr[1:] != arr[:-1]])]


def member(ids: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Boolean mask: which ``ids`` (any order) are in ``sorted_set``. O(len(ids) log n), unlike
    np.isin, which sorts both arrays on every call."""
    if sorted_set.size == 0:
        return np.zeros(len(ids), dtype=bool)
    pos = np.searchsorted(sorted_set, ids)
    pos[pos >= sorted_set.size] = 0
    return sorted_set[pos] == ids


def remove(sorted_ids: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """``sorted_ids`` without ``drop`` (both sorted sets); no copy when nothing is dropped."""
    if drop.size == 0 or sorted_ids.size == 0:
        return sorted_ids
    pos = np.searchsorted(sorted_ids, drop)
    ok = pos < sorted_ids.size
    pos = pos[ok]
    pos = pos[sorted_ids[pos] == drop[ok]]
    return np.delete(sorted_ids, pos) if pos.size else sorted_ids
