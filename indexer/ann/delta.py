"""New vectors beside an on-disk index: a small delta searched with it, folded into it now and then.

An on-disk index (:mod:`indexer.ann.sharded`) cannot take more vectors in practice: FAISS's
maintainers call adding to ``OnDiskInvertedLists`` "so inefficient that it is not practically
usable". New vectors are therefore encoded with the index's own trained quantizer and codes (no
retraining) into a delta: ordinary in-RAM inverted lists saved as ``PATH.delta``. Loading stacks
each delta list after its on-disk list (:func:`indexer.ann.io.load_index`), so one FAISS index
searches both with the same parameters, filters and exact re-ranking, and scores are comparable.

Costs: adding m vectors encodes m vectors (what a full build spends per vector on its add phase)
and rewrites the delta file (the delta's codes, small); nothing is trained. When the delta holds
more than ``fold_fraction`` of the main lists (default ``DELTA_FOLD_FRACTION``), it is folded in:
every list is copied once into a new ``.ivfdata`` (a sequential copy at disk speed, no encoding),
so with 1% added per update a fold comes every ~5 updates.

Drift: each addition measures how well the codes reconstruct the new vectors
(:func:`indexer.ann.train.pq_error`) against the error measured on the training data at build
time; ``info.build["drift"]`` is their ratio. Above ``DRIFT_RETRAIN_RATIO`` the new images no
longer look like what the index was trained on (another taxon group, another camera): a warning
says to run ``bioclip-index reindex --retrain``. Retired ids stay in the lists and are excluded at
search time (the engine passes them) until a retrain rebuilds the index.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from indexer.ann.exact import f32
from indexer.ann.info import IndexInfo
from indexer.ann.io import (
    delta_path,
    faiss_prints_to_stderr,
    is_ondisk,
    link_or_copy,
    ondisk_data_path,
    read_info,
    write_sidecar,
)
from indexer.ann.layout import add_chunk_rows
from indexer.ann.lists import keep_lists, point_lists_at, read_lists, write_lists
from indexer.ann.train import pq_error
from indexer.errors import AnnError
from indexer.store.files import atomic_path
from indexer.store.pieces import Piece, sample_rows, total_rows

__all__ = ["extend_ondisk", "fold_ondisk", "DELTA_FOLD_FRACTION", "DRIFT_RETRAIN_RATIO"]

log = logging.getLogger(__name__)

DELTA_FOLD_FRACTION = 0.05
"""The delta is folded into the on-disk lists once it holds more than this fraction of them."""
DRIFT_RETRAIN_RATIO = 1.25
"""New vectors whose codes reconstruct them this much worse than the training data's: retrain."""
DRIFT_SAMPLE = 10_000


class _Opened:
    """An on-disk index read from ``src``, its on-disk lists set aside and its delta (the saved one,
    or an empty one) in their place, writable."""

    def __init__(self, src: Path):
        import faiss

        self.src = src
        self.info = read_info(src)
        if not is_ondisk(self.info):
            raise AnnError(f"index {src} is not an on-disk index")
        with faiss_prints_to_stderr():
            self.index = faiss.read_index(str(src), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
        self.ivf = faiss.extract_index_ivf(self.index)
        self.main_n = int(self.ivf.ntotal)
        self.keeper, self.main = keep_lists(self.index)  # the on-disk lists, owned by the keeper
        nlist, code_size = int(self.ivf.nlist), int(self.ivf.code_size)
        if self.info.build.get("delta"):
            self.delta = read_lists(delta_path(src), nlist, code_size)
        else:
            self.delta = faiss.ArrayInvertedLists(nlist, code_size)
        self.ivf.replace_invlists(self.delta, False)  # the index owns no lists: Python holds them all
        self._set_ntotal(int(self.delta.compute_ntotal()))

    def _set_ntotal(self, n: int) -> None:
        self.ivf.ntotal = n
        self.index.ntotal = n

    @property
    def delta_n(self) -> int:
        return int(self.ivf.ntotal)

    def add(self, pieces: Sequence[Piece], progress: Callable[[int, int], None] | None) -> int:
        chunk = add_chunk_rows(self.index)
        total, done, added = total_rows(pieces), 0, 0
        for piece in pieces:
            for ids, vecs in piece.read(chunk):
                if ids.size:
                    self.index.add_with_ids(f32(vecs), np.ascontiguousarray(ids, dtype=np.int64))
                    added += ids.size
                done += ids.size
                if progress:
                    progress(done, total)
        return added

    def write_delta(self, dest: Path) -> None:
        """``dest``: the same on-disk lists (linked), this delta, the index file naming them."""
        link_or_copy(ondisk_data_path(self.src), ondisk_data_path(dest))
        write_lists(self.delta, delta_path(dest))
        self._write_index(dest, ondisk_data_path(dest))
        self.info.build["delta"] = {"n": self.delta_n, "file_bytes": delta_path(dest).stat().st_size}

    def fold(self, dest: Path) -> None:
        """``dest``: one on-disk file holding every list of the main and the delta, no delta."""
        import faiss

        both = faiss.InvertedListsPtrVector()
        both.push_back(self.main)
        both.push_back(self.delta)
        out = ondisk_data_path(dest)
        if out.exists():
            out.unlink()
        with faiss_prints_to_stderr():
            merged_lists = faiss.OnDiskInvertedLists(self.ivf.nlist, self.ivf.code_size, str(out))
            n = int(merged_lists.merge_from_multiple(both.data(), both.size(), False, False))
        if n != self.main_n + self.delta_n:
            raise AnnError(f"folding the delta gave {n} vectors, expected {self.main_n + self.delta_n}")
        self.keeper = None  # frees the old on-disk lists
        self.main = merged_lists
        self.main_n = n
        self.delta = faiss.ArrayInvertedLists(self.ivf.nlist, self.ivf.code_size)
        self.ivf.replace_invlists(self.delta, False)
        self._set_ntotal(0)
        self._write_index(dest, out)
        self.info.build["delta"] = {}
        self.info.build["ntotal"] = n
        self.info.build["ivfdata_bytes"] = out.stat().st_size
        self.info.build["folds"] = int(self.info.build.get("folds", 0)) + 1

    def _write_index(self, dest: Path, ivfdata: Path) -> None:
        """Write the index with the on-disk lists in place (naming ``ivfdata``), then put the delta back."""
        import faiss

        delta_n = self.delta_n
        self.ivf.replace_invlists(self.main, False)
        self._set_ntotal(self.main_n)
        point_lists_at(self.index, ivfdata)
        with atomic_path(dest) as tmp:
            faiss.write_index(self.index, str(tmp))
        self.ivf.replace_invlists(self.delta, False)
        self._set_ntotal(delta_n)


def extend_ondisk(
    src: str | Path,
    dest: str | Path,
    pieces: Sequence[Piece],
    *,
    fold_fraction: float = DELTA_FOLD_FRACTION,
    progress: Callable[[int, int], None] | None = None,
) -> IndexInfo:
    """Save at ``dest`` the on-disk index at ``src`` plus the vectors of ``pieces`` (ids not yet in
    it), added to its delta (folded in when it outgrows ``fold_fraction``); returns its info.
    ``src`` is left as it was (its files are shared by hard links where the disk allows)."""
    t0 = time.perf_counter()
    src, dest = Path(src), Path(dest)
    if src.resolve() == dest.resolve():
        raise AnnError("extend_ondisk writes a new index: give another path than the source's")
    opened = _Opened(src)
    info = opened.info
    added = opened.add(pieces, progress)
    drift = _drift(opened, pieces, info)
    if opened.delta_n > fold_fraction * opened.main_n:
        log.info("folding a delta of %d vectors into the %d on disk", opened.delta_n, opened.main_n)
        opened.fold(dest)
    else:
        opened.write_delta(dest)
    info.n = opened.main_n + opened.delta_n
    if drift is not None:
        info.build["drift"] = round(drift, 4)
    info.build.setdefault("added", []).append({"n": added, "seconds": round(time.perf_counter() - t0, 2)})
    info.build["added"] = info.build["added"][-20:]
    write_sidecar(dest, info)
    if drift is not None and drift > DRIFT_RETRAIN_RATIO:
        log.warning(
            "new vectors are reconstructed %.2fx worse than the training data (drift): the index was trained on "
            "different images; run 'bioclip-index reindex --retrain' to train it again",
            drift,
        )
    log.info(
        "added %d vectors beside the on-disk index (delta %d) in %.1fs", added, opened.delta_n, time.perf_counter() - t0
    )
    return info


def fold_ondisk(src: str | Path, dest: str | Path) -> IndexInfo:
    """Save at ``dest`` the on-disk index at ``src`` with its delta folded into the on-disk lists."""
    src, dest = Path(src), Path(dest)
    if src.resolve() == dest.resolve():
        raise AnnError("fold_ondisk writes a new index: give another path than the source's")
    opened = _Opened(src)
    opened.fold(dest)
    opened.info.n = opened.main_n
    write_sidecar(dest, opened.info)
    return opened.info


def _drift(opened: _Opened, pieces: Sequence[Piece], info: IndexInfo) -> float | None:
    baseline = info.build.get("pq_error")
    n = total_rows(pieces)
    if not baseline or n == 0:
        return None
    _, sample = sample_rows(pieces, min(n, DRIFT_SAMPLE), np.random.default_rng(n))
    error = pq_error(opened.index, sample)
    return None if np.isnan(error) else float(error / baseline)
