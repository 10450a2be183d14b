"""Keeping a collection's ANN index up to date with its stored vectors.

The index is derived data: it is built from the vectors in the segments, covers a recorded set
of segments, and can be rebuilt at any time with another index type (``bioclip-index reindex``).
Segments committed after the index was built are searched exactly by the engine until the next
update, so readers always see every committed image.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from indexer.ann.build import build_index
from indexer.ann.choice import choose_index, fits_incremental
from indexer.ann.index import AnnIndex
from indexer.ann.tuning_inputs import TuningInputs, gather

if TYPE_CHECKING:  # pragma: no cover
    from indexer.store import Writer

__all__ = ["update_index", "index_path"]

log = logging.getLogger(__name__)


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
) -> dict | None:
    """Bring the ANN index in line with the writer's last generation and publish it.

    Adds the uncovered segments to the existing index when its type allows and still suits the
    collection's size; otherwise (or with ``force`` / a different ``factory``) rebuilds it from all
    stored vectors, tuned per query kind on what ``tuning`` allows
    (:mod:`indexer.ann.tuning_inputs`: the collection's text phrases, embedded with its model when
    one is given and cached; a user's query file; the query log). Returns the published index
    entry (None for an empty collection).
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
    index = None
    if not rebuild:
        assert entry is not None
        if not uncovered and int(entry.get("deleted_seen", -1)) == int(deleted.size):
            return entry  # nothing changed since the index was built
        try:
            index = AnnIndex.load(index_path(col_path, entry))
        except Exception as exc:  # a damaged or missing derived file is rebuilt, never fatal
            log.warning("cannot load the ANN index (%s); rebuilding it", exc)
            rebuild = True
        else:
            if not fits_incremental(index, live, memory_budget):
                log.info("the collection outgrew its %s index; rebuilding", index.factory)
                rebuild = True

    t0 = time.monotonic()
    if rebuild:
        # exact search needs no tuning: the phrases wait until an approximate index does (a user's
        # file is still read, so that a bad one is an error whatever the index)
        exact = (factory or choose_index(live, writer.collection.dimension, memory_budget)) == "Flat"
        queries = gather(writer.collection, snap.connect(materialize=False), tuning or TuningInputs(), exact=exact)
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
    else:
        assert index is not None
        if uncovered:
            ids, vecs = snap.load_vectors(uncovered, dtype=np.float16)
            if len(ids):
                index.add(np.asarray(vecs, dtype=np.float32), ids)
        if deleted.size and index.supports_remove:
            index.remove(deleted)
    rel = writer.new_file_name("ann", ".faiss")
    index.save(os.path.join(col_path, rel))
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


def _index_files(col_path, rel: str) -> list[str]:
    """Every file the saved index consists of (the index and any sidecar next to it)."""
    d = os.path.dirname(os.path.join(col_path, rel))
    base = os.path.basename(rel)
    return sorted(f"index/{n}" for n in os.listdir(d) if n == base or n.startswith(base + "."))
