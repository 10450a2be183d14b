"""Stored vectors in picklable pieces, for builds that read them in several processes or machines.

A piece names rows of one vector file (no data), so it can be sent to a worker process or a Ray
task that reads the file itself (memory-mapped): :class:`VectorPiece` for a collection's float16
``seg-*.f16.npy`` files (ids ``first_id + row``, retired ids left out), :class:`ArrayPiece` for a
matrix already in memory (vectors handed to ``build_index``). A pickled ArrayPiece carries only its
own rows: those of a memory-mapped file are reopened from the file (no copy; like a VectorPiece's
file, a path every worker must see), those of an in-memory matrix are copied, never the whole
matrix a cut was taken from. Both yield
``(ids int64, vectors float16/float32)`` blocks of at most ``chunk_rows`` rows, so a reader's memory
stays at one block whatever the piece's size. :func:`split_pieces` cuts pieces into groups of at
most a given number of rows: the shards of a sharded index build.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from indexer.errors import CollectionError
from indexer.store.ids import member

__all__ = ["Piece", "VectorPiece", "ArrayPiece", "split_pieces", "sample_rows", "total_rows"]

#: Rows per block a piece yields by default (16 MiB of float16 at 768-d).
CHUNK_ROWS = 10_922


class Piece(Protocol):
    """Rows of stored vectors: ``rows`` of them (retired ones included), read in blocks."""

    @property
    def rows(self) -> int: ...

    def read(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def cut(self, start: int, stop: int) -> Piece: ...


@dataclass(frozen=True, eq=False)
class VectorPiece:
    """Rows ``start .. stop`` of the float16 ``.npy`` file ``path``, whose row r holds id ``first_id + r``;
    the sorted ids in ``retired`` are left out of what :meth:`read` and :meth:`take` return."""

    path: str
    first_id: int
    start: int
    stop: int
    retired: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def _array(self) -> np.ndarray:
        try:
            return np.load(self.path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise CollectionError(f"cannot read vectors {self.path}: {exc}") from exc

    def _keep(self, ids: np.ndarray, vecs: Any) -> tuple[np.ndarray, np.ndarray]:
        if self.retired is not None and self.retired.size:
            keep = ~member(ids, self.retired)
            if not keep.all():
                return ids[keep], np.asarray(vecs[keep])
        return ids, np.asarray(vecs)

    def read(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        arr = self._array()
        for a in range(self.start, self.stop, chunk_rows):
            b = min(self.stop, a + chunk_rows)
            ids = np.arange(self.first_id + a, self.first_id + b, dtype=np.int64)
            yield self._keep(ids, arr[a:b])

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the given sorted row offsets within the piece (retired ones left out)."""
        arr = self._array()
        at = self.start + np.asarray(rows, dtype=np.int64)
        return self._keep(self.first_id + at, arr[at])

    def cut(self, start: int, stop: int) -> VectorPiece:
        return replace(self, start=self.start + start, stop=self.start + stop)


@dataclass(frozen=True, eq=False)
class ArrayPiece:
    """Rows ``start .. stop`` of a matrix in memory (float32/float16, possibly a memmap) with its ids."""

    vectors: Any
    ids: np.ndarray
    start: int = 0
    stop: int | None = None

    @property
    def rows(self) -> int:
        return (self.ids.shape[0] if self.stop is None else self.stop) - self.start

    def read(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        stop = self.start + self.rows
        for a in range(self.start, stop, chunk_rows):
            b = min(stop, a + chunk_rows)
            yield np.asarray(self.ids[a:b], dtype=np.int64), np.asarray(self.vectors[a:b])

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at = self.start + np.asarray(rows, dtype=np.int64)
        return np.asarray(self.ids[at], dtype=np.int64), np.asarray(self.vectors[at])

    def cut(self, start: int, stop: int) -> ArrayPiece:
        return replace(self, start=self.start + start, stop=self.start + stop)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Only this piece's rows travel: a shard task sent to a worker process must not carry the
        # whole matrix its piece was cut from (a pickled np.memmap is a full in-memory copy).
        a, b = self.start, self.start + self.rows
        ids = np.ascontiguousarray(self.ids[a:b])
        where = _mapped_rows(self.vectors, a, b)
        if where is not None:
            return _reopen_piece, (*where, ids)
        return ArrayPiece, (np.ascontiguousarray(self.vectors[a:b]), ids)


def _mapped_rows(vectors: Any, start: int, stop: int) -> tuple[str, int, str, tuple[int, ...]] | None:
    """(file, byte offset, dtype, shape) of rows ``start .. stop`` of a C-contiguous np.memmap of a
    file, or None when ``vectors`` is not one (then the rows are pickled as data)."""
    if not isinstance(vectors, np.memmap) or not vectors.filename or not vectors.flags.c_contiguous:
        return None
    mm = getattr(vectors, "_mmap", None)
    if not isinstance(mm, mmap.mmap) or vectors.ndim != 2:
        return None
    # np.memmap maps from the allocation-granularity boundary below its offset; a slice of it keeps
    # the parent's ``offset``, so the file position is found from the data address within the map.
    mapped_from = vectors.offset - vectors.offset % mmap.ALLOCATIONGRANULARITY
    base = np.frombuffer(mm, dtype=np.uint8).ctypes.data
    at = mapped_from + (vectors.ctypes.data - base) + start * vectors.strides[0]
    return str(vectors.filename), int(at), vectors.dtype.str, (stop - start, *vectors.shape[1:])


def _reopen_piece(path: str, offset: int, dtype: str, shape: tuple[int, ...], ids: np.ndarray) -> ArrayPiece:
    if shape[0] == 0:
        return ArrayPiece(np.empty(shape, dtype=dtype), ids)
    try:
        vectors = np.memmap(path, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape)
    except (OSError, ValueError) as exc:
        raise CollectionError(f"cannot reopen vectors {path}: {exc}") from exc
    return ArrayPiece(vectors, ids)


def total_rows(pieces: Sequence[Piece]) -> int:
    return sum(p.rows for p in pieces)


def split_pieces(pieces: Sequence[Piece], max_rows: int) -> list[list[Piece]]:
    """Groups of consecutive (parts of) pieces holding at most ``max_rows`` rows each, in order."""
    if max_rows < 1:
        raise ValueError("max_rows must be >= 1")
    groups: list[list[Piece]] = []
    current: list[Piece] = []
    room = max_rows
    for piece in pieces:
        offset = 0
        while offset < piece.rows:
            take = min(room, piece.rows - offset)
            current.append(piece if (offset == 0 and take == piece.rows) else piece.cut(offset, offset + take))
            offset += take
            room -= take
            if room == 0:
                groups.append(current)
                current, room = [], max_rows
    if current:
        groups.append(current)
    return groups


def sample_rows(pieces: Sequence[Piece], size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of about ``size`` live rows over all pieces, as (ids, float16/float32 vectors).

    Rows are drawn without replacement over the pieces' rows (retired ones included, then left out,
    so the sample may be slightly smaller) and read in row order, piece by piece.
    """
    n = total_rows(pieces)
    if size >= n:
        picked = np.arange(n, dtype=np.int64)
    else:
        picked = np.sort(rng.choice(n, size=size, replace=False))
    ids_parts, vec_parts = [], []
    base = 0
    for piece in pieces:
        lo, hi = np.searchsorted(picked, [base, base + piece.rows])
        if hi > lo:
            ids, vecs = piece.take(picked[lo:hi] - base)
            ids_parts.append(ids)
            vec_parts.append(vecs)
        base += piece.rows
    if not ids_parts:
        raise CollectionError("no vectors to sample")
    return np.concatenate(ids_parts), np.concatenate(vec_parts)
