"""An ANN index over stable int64 ids: a FAISS index with its :class:`~indexer.ann.info.IndexInfo`.

Contracts: vectors are L2-normalised rows (float32 or float16); every score is an inner product
(= cosine), higher is better; every search returns the caller's ids, rows padded with (-inf, -1).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from indexer.ann.exact import as_matrix, f32, id_array, id_set
from indexer.ann.info import IndexInfo
from indexer.ann.io import is_ondisk, load_index, save_index
from indexer.ann.layout import Layout, add_chunks
from indexer.ann.search import Request, Searcher
from indexer.errors import AnnError, AnnUnsupportedError
from indexer.store.ids import remove as remove_ids
from indexer.store.vectors import VectorLookup

__all__ = ["AnnIndex", "PARAM_NAMES"]

#: The search parameters a caller may override (and tuning sets).
PARAM_NAMES = ("nprobe", "efSearch", "k_factor", "rerank", "filter_budget")


class AnnIndex:
    """A FAISS index over stable int64 ids, with its :class:`IndexInfo`.

    Thread safety: searches may run concurrently; ``add``/``remove`` must not overlap anything else.
    """

    def __init__(self, index: Any, info: IndexInfo, *, read_only: bool = False, source: Path | None = None):
        self._index = index
        self._layout = Layout.of(index)
        self._searcher = Searcher(index, self._layout)
        self.info = info
        self._read_only = read_only
        self._source = source  # the file a memory-mapped index lives in

    # ---- description

    @property
    def factory(self) -> str:
        return self.info.factory

    @property
    def dimension(self) -> int:
        return int(self._index.d)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def layout(self) -> Layout:
        """Where the pieces of the FAISS index are (kind, leaf, wrappers), for inspection."""
        return self._layout

    @property
    def supports_remove(self) -> bool:
        """False for HNSW and in-index refines (use ``excluded_ids``) and for memory-mapped indexes."""
        return self._layout.can_remove and not self._read_only

    @property
    def supports_add(self) -> bool:
        return not self._read_only

    @property
    def needs_vector_lookup(self) -> bool:
        """True when the tuned recall of some query kind assumes search() is given ``vector_lookup``
        (exact re-ranking)."""
        kinds = [self.info.params, *(k.get("params") or {} for k in self.info.kinds.values())]
        return any(p.get("rerank", 1) > 1 for p in kinds)

    @property
    def faiss_index(self) -> Any:
        """The underlying FAISS index (for inspection; mutate it only through this class)."""
        return self._index

    def __repr__(self) -> str:
        return f"AnnIndex({self.factory!r}, ntotal={self.ntotal}, d={self.dimension}, params={self.info.params})"

    # ---- mutation

    def add(self, vectors: np.ndarray, ids: np.ndarray, *, progress: Callable[[int, int], None] | None = None) -> None:
        """Add vectors (n, d) float32/float16 under new ids (n,), in chunks (memory stays flat).

        The ids must not already be in the index (adding an id twice stores it twice).
        Raises :class:`AnnUnsupportedError` on a read-only (memory-mapped) index.
        """
        if self._read_only:
            raise AnnUnsupportedError("this index was loaded memory-mapped read-only; load it with mmap=False to add")
        vectors = as_matrix(vectors, self.dimension, "vectors")
        ids = id_array(ids, "ids")
        if ids.shape[0] != vectors.shape[0]:
            raise AnnError(f"ids has {ids.shape[0]} entries for {vectors.shape[0]} vectors")
        self._searcher.invalidate()
        for done, total in add_chunks(self._index, vectors, ids):
            if progress:
                progress(done, total)
        self.info.n = self.ntotal

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids from the index; returns how many were removed (ids not present are ignored).

        Raises :class:`AnnUnsupportedError` where ``supports_remove`` is False: pass the retired ids
        as ``excluded_ids`` to :meth:`search` instead.
        """
        import faiss

        if not self.supports_remove:
            why = "loaded memory-mapped read-only" if self._read_only else f"a {self._layout.kind} index"
            raise AnnUnsupportedError(f"cannot remove from {self.factory!r} ({why}); exclude the ids at search time")
        wanted = id_set(ids, "ids")
        assert wanted is not None
        ids = np.ascontiguousarray(wanted)
        if ids.size == 0:
            return 0
        self._searcher.invalidate()
        removed = int(self._index.remove_ids(faiss.IDSelectorBatch(ids.size, faiss.swig_ptr(ids))))
        self.info.n = self.ntotal
        return removed

    # ---- search

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed_ids: np.ndarray | None = None,
        excluded_ids: np.ndarray | None = None,
        params: dict[str, int] | None = None,
        vector_lookup: VectorLookup | None = None,
        exact_subsets: bool = True,
        kind: str = "image",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores (m, k) float32, ids (m, k) int64), padded with (-inf, -1).

        ``queries`` (m, d) float32 (a single (d,) vector is accepted). ``allowed_ids``: only these ids
        may be returned (any order; sorted unique input skips a sort); ``excluded_ids``: these never
        are. Results only ever hold ids that are in the index. ``kind`` (``image``, ``text`` or
        ``mixed``) picks the parameters tuned for that kind of query (the image ones where it was not
        measured); ``params`` overrides them (``nprobe``, ``efSearch``, ``k_factor``, ``rerank``,
        ``filter_budget``). ``vector_lookup(ids) ->
        float32 (len(ids), d)`` gives stored vectors by id: it enables the exact path for small allowed
        sets and the exact re-ranking of compressed indexes (without it they return the codes'
        approximate order; see ``needs_vector_lookup``). See :mod:`indexer.ann.search` for the filter
        policy; ``exact_subsets=False`` keeps a filtered search off its exact path (tuning measures the
        others). Memory: O(m k), plus O(len(allowed_ids)) for a filter (a bitmap over the ids, their
        lists), plus one ~16 MiB chunk of allowed vectors at a time on the exact path.
        """
        q = f32(as_matrix(queries, self.dimension, "queries"))
        if k < 1:
            raise AnnError("k must be >= 1")
        req = Request(q, k, self._params(params, kind), vector_lookup)
        allowed = id_set(allowed_ids, "allowed_ids")
        excluded = id_set(excluded_ids, "excluded_ids")
        if allowed is not None:
            if excluded is not None:
                allowed = remove_ids(allowed, excluded)
            return self._searcher.filtered(req, allowed[allowed >= 0], exact_ok=exact_subsets)
        return self._searcher.unfiltered(req, excluded)

    def candidates(self, queries: np.ndarray, k: int, params: dict[str, int] | None = None) -> np.ndarray:
        """The ids (m, k) an unfiltered search at ``params`` takes from FAISS before any exact
        re-rank, best first by the index's own scores (tuning reads every re-rank depth off them)."""
        q = f32(as_matrix(queries, self.dimension, "queries"))
        return self._searcher.candidates(q, k, self._params(params))

    def search_params(self, kind: str = "image") -> dict[str, int]:
        """The parameters a search of ``kind`` queries runs with: those tuned for the kind (the image
        ones where it was not measured), with the defaults of the index type filled in."""
        return self._params(None, kind)

    def _params(self, override: dict[str, int] | None, kind: str = "image") -> dict[str, int]:
        p = self.info.params_for(kind)
        for key, value in (override or {}).items():
            if key not in PARAM_NAMES:
                raise AnnError(f"unknown search parameter {key!r}; expected one of {PARAM_NAMES}")
            if int(value) < 1:
                raise AnnError(f"search parameter {key} must be >= 1, got {value}")
            p[key] = int(value)
        if self._layout.kind == "ivf":
            p.setdefault("nprobe", min(8, self._layout.leaf.nlist))
        if self._layout.kind == "hnsw":
            p.setdefault("efSearch", 64)
        if self._layout.refine is not None:
            p.setdefault("k_factor", 1)
        return p

    # ---- persistence

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to ``path`` and its info to ``path.json`` (see :mod:`indexer.ann.io`)."""
        save_index(self._index, self.info, path, mapped_from=self._source)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, mmap: bool = False) -> AnnIndex:
        """Read an index saved by :meth:`save`; ``mmap=True`` maps it read-only (``add`` and
        ``remove`` then raise; see :func:`indexer.ann.io.load_index`). An on-disk index (a sharded
        build) is always mapped read-only."""
        index, info = load_index(path, mmap=mmap)
        mapped = mmap or is_ondisk(info)
        return cls(index, info, read_only=mapped, source=Path(path).resolve() if mapped else None)
