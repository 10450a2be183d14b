"""The collection on disk: manifest, writer lock, segments, generations, snapshots, atomic files.

Public surface::

    from indexer.store import Collection, Snapshot, Writer, is_collection
    collection = Collection.open(path)          # or Collection.create(path, model_info, dimension=d)
    snapshot = collection.snapshot()            # a read-only view of the newest generation
    with collection.writer() as writer:         # the one writer (flock); add, retire, commit
        ...

See docs/ARCHITECTURE.md, "The collection on disk".
"""

from indexer.store.collection import MANIFEST, Collection, is_collection
from indexer.store.generations import FORMAT_VERSION, KEEP_GENERATIONS, Generation, SegmentInfo
from indexer.store.snapshot import FAILURE_SCHEMA, Snapshot
from indexer.store.writer import Writer

__all__ = [
    "FORMAT_VERSION",
    "KEEP_GENERATIONS",
    "MANIFEST",
    "FAILURE_SCHEMA",
    "Collection",
    "Generation",
    "SegmentInfo",
    "Snapshot",
    "Writer",
    "is_collection",
]
