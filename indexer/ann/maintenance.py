"""Keeping a collection's ANN index up to date with its stored vectors.

The index is derived data: it is built from the vectors in the segments, covers a recorded set
of segments, and can be rebuilt at any time with another index type (``bioclip-index reindex``).
Segments committed after the index was built are searched exactly by the engine until the next
update, so readers always see every committed image.

From ``ONDISK_MIN_ROWS`` vectors on (or with ``ondisk=True``) the index is built from shards and
kept on disk (:mod:`indexer.ann.ondisk`): build memory stays bounded whatever n, and a search process
maps the lists rather than loading them. Later updates add the new vectors to its delta
(:mod:`indexer.ann.delta`, no retraining); ``retrain=False`` with ``force`` folds the delta in, and
``force`` alone (``bioclip-index reindex --retrain``) trains a new index.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from indexer.ann.build import build_index
from indexer.ann.choice import choose_index, fits_incremental, is_fast_scan, ivf_nlist
from indexer.ann.delta import extend_ondisk, fold_ondisk
from indexer.ann.index import AnnIndex
from indexer.ann.io import is_ondisk
from indexer.ann.ondisk import build_ondisk_index
from indexer.ann.sharded import ShardOptions
from indexer.ann.tuning_inputs import TuningInputs, gather
from indexer.errors import AnnError
from indexer.store.files import disk_full_error, is_out_of_space

if TYPE_CHECKING:  # pragma: no cover
    from indexer.store import Writer

__all__ = ["update_index", "index_path", "ONDISK_MIN_ROWS", "ondisk_factory"]

log = logging.getLogger(__name__)

ONDISK_MIN_ROWS = 10_000_000
"""From this many vectors on, the index is built from shards and kept on disk."""
ONDISK_MIN_NLIST = 65_536
"""The fewest inverted lists an automatically chosen on-disk index of ONDISK_MIN_ROWS+ vectors has."""


def index_path(collection_path: os.PathLike | str, entry: dict) -> str:
    return os.path.join(os.fspath(collection_path), entry["path"])


def update_index(
    writer: Writer,
    *,
    factory: str | None = None,
    memory_budget: int | None = None,
    recall_target: float = 0.95,
    force: bool = False,
    tuning: TuningInputs | None = None,
    retrain: bool = True,
    ondisk: bool | None = None,
    shards: ShardOptions | None = None,
) -> dict | None:
    """Bring the ANN index in line with the writer's last generation and publish it.

    Adds the uncovered segments to the existing index when its type allows and still suits the
    collection's size; otherwise (or with ``force`` / a different ``factory``) rebuilds it from all
    stored vectors, tuned per query kind on what ``tuning`` allows
    (:mod:`indexer.ann.tuning_inputs`: the collection's text phrases, embedded with its model when
    one is given and cached; a user's query file; the query log). Returns the published index
    entry (None for an empty collection).

    ``ondisk``: build a sharded on-disk index (None: from ``ONDISK_MIN_ROWS`` vectors on), its
    shards run as ``shards`` says (local processes by default, or Ray tasks). An on-disk index
    takes new vectors into its delta; ``force`` with ``retrain=False`` folds the delta into it
    instead of training a new index (unless ``factory`` asks for another type).
    """
    snap = writer.snapshot()
    gen = snap.generation
    entry = gen.index
    all_segments = [s.n for s in gen.segments]
    live = gen.images
    if live == 0:
        if entry is not None:
            writer.publish_index(None)
        return None
    covered = set(entry.get("covers", [])) if entry else set()
    uncovered = [s for s in gen.segments if s.n not in covered]
    deleted = snap.deleted_ids()
    col_path = writer.collection.path

    rebuild = force or entry is None or (factory is not None and factory != entry.get("factory"))
    same_type = entry is not None and (factory is None or factory == entry.get("factory"))
    fold = force and not retrain and same_type and _entry_is_ondisk(entry)
    if fold:
        rebuild = False
    index = None
    if not rebuild:
        assert entry is not None
        if not fold and not uncovered and int(entry.get("deleted_seen", -1)) == int(deleted.size):
            return entry  # nothing changed since the index was built
        try:
            index = AnnIndex.load(index_path(col_path, entry))
        except Exception as exc:  # a damaged or missing derived file is rebuilt, never fatal
            log.warning("cannot load the ANN index (%s); rebuilding it", exc)
            rebuild = True
        else:
            if not is_ondisk(index.info) and not fits_incremental(index, live, memory_budget):
                log.info("the collection outgrew its %s index; rebuilding", index.factory)
                rebuild = True

    t0 = time.monotonic()
    rel = writer.new_file_name("ann", ".faiss")
    path = os.path.join(col_path, rel)
    to_disk = ondisk if ondisk is not None else live >= ONDISK_MIN_ROWS
    if rebuild:
        # exact search needs no tuning: the phrases wait until an approximate index does (a user's
        # file is still read, so that a bad one is an error whatever the index)
        chosen = ondisk_factory(factory, live, snap.dimension, memory_budget) if to_disk else factory
        exact = (chosen or choose_index(live, writer.collection.dimension, memory_budget)) == "Flat"
        queries = gather(writer.collection, snap.connect(materialize=False), tuning or TuningInputs(), exact=exact)
    if rebuild and to_disk:
        log.info("building the ANN index over %d vectors from shards, on disk (%s)", live, chosen)
        index = build_ondisk_index(
            snap.vector_pieces(deleted=deleted),
            path,
            factory=str(chosen),
            dimension=snap.dimension,
            recall_target=recall_target,
            options=shards,
            tuning_queries=queries,
            vector_lookup=snap.get_vectors,
        )
    elif rebuild:
        ids, vecs = snap.load_vectors(dtype=np.float16)
        log.info("building the ANN index over %d vectors", len(ids))
        index = build_index(
            vecs,
            ids,
            factory=factory,
            memory_budget=memory_budget,
            recall_target=recall_target,
            tuning_queries=queries,
        )
    elif index is not None and is_ondisk(index.info):
        old = index_path(col_path, entry or {})
        if uncovered:
            extend_ondisk(old, path, snap.vector_pieces(uncovered, deleted=deleted))
        elif fold:
            fold_ondisk(old, path)
        else:
            index.save(path)
        index = AnnIndex.load(path)
    else:
        assert index is not None
        if uncovered:
            ids, vecs = snap.load_vectors(uncovered, dtype=np.float16)
            if len(ids):
                index.add(np.asarray(vecs, dtype=np.float32), ids)
        if deleted.size and index.supports_remove:
            index.remove(deleted)
    if not os.path.exists(path):
        _save(index, col_path, rel)
    info = index.info.to_dict()
    new_entry = {
        "path": rel,
        "files": _index_files(col_path, rel),
        "factory": index.factory,
        "covers": all_segments,
        "deleted_seen": int(deleted.size),
        "removes_deleted": bool(index.supports_remove),
        "info": info,
        "seconds": round(time.monotonic() - t0, 3),
    }
    writer.publish_index(new_entry)
    log.info("published %s index (%d vectors) in %.1fs", index.factory, index.ntotal, new_entry["seconds"])
    return new_entry


def _entry_is_ondisk(entry: dict | None) -> bool:
    return bool(entry) and ((entry or {}).get("info") or {}).get("build", {}).get("storage") == "ondisk"


def ondisk_factory(factory: str | None, n: int, d: int, memory_budget: int | None) -> str:
    """The factory of an on-disk index: ``factory``, else the automatic choice, which must be IVF
    (exact ``Flat``, chosen for small collections, becomes ``IVF{nlist},Flat``; from
    ``ONDISK_MIN_ROWS`` on it has at least ``ONDISK_MIN_NLIST`` lists and an HNSW quantizer)."""
    chosen = factory or choose_index(n, d, memory_budget, ondisk=True)
    if chosen == "Flat" and factory is None:
        chosen = f"IVF{ivf_nlist(n)},Flat"
    if factory is None and n >= ONDISK_MIN_ROWS:
        # 65,536+ lists from 10M on: shorter lists to read from disk per probe (FAISS wiki, autofaiss)
        head, _, code = chosen.partition(",")
        nlist = int(head[3:].split("_")[0])
        if nlist < ONDISK_MIN_NLIST:
            chosen = f"IVF{ONDISK_MIN_NLIST}_HNSW32,{code}"
    if is_fast_scan(chosen):
        raise AnnError(
            f"an on-disk index cannot hold fast-scan codes ({chosen!r}): FAISS keeps them in its own blocked "
            "lists; use an 8-bit PQ code such as PQ64 instead"
        )
    if not any(part.startswith("IVF") for part in chosen.split(",")) or "Refine" in chosen or chosen.endswith("RFlat"):
        raise AnnError(f"an on-disk index must be an IVF index without an in-index refine, not {chosen!r}")
    return chosen


def _save(index: AnnIndex, col_path: os.PathLike | str, rel: str) -> None:
    """Save the index as ``rel``; a full disk is a DiskFullError (nothing of the index is left)."""
    path = os.path.join(col_path, rel)
    try:
        index.save(path)
    except (OSError, RuntimeError, AnnError) as exc:
        cause = exc.__cause__ if isinstance(exc, AnnError) and exc.__cause__ is not None else exc
        if not is_out_of_space(cause):
            raise
        for name in _index_files(col_path, rel):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(col_path, name))
        need = int(index.info.memory_bytes or 0) + (1 << 20)
        raise disk_full_error(col_path, need, f"writing the search index ({index.ntotal:,} vectors)") from None


def _index_files(col_path, rel: str) -> list[str]:
    """Every file the saved index consists of (the index and any sidecar next to it)."""
    d = os.path.dirname(os.path.join(col_path, rel))
    base = os.path.basename(rel)
    return sorted(f"index/{n}" for n in os.listdir(d) if n == base or n.startswith(base + "."))
