"""Named exceptions of the indexer and search engine. Only the CLI and the app turn them into messages."""

from __future__ import annotations

__all__ = [
    "IndexerError",
    "LocationError",
    "SourceError",
    "ItemError",
    "FetchError",
    "DecodeError",
    "CollectionError",
    "CollectionNotFoundError",
    "FormatVersionError",
    "ModelMismatchError",
    "CollectionLockedError",
    "DiskFullError",
    "QueryError",
    "FilterError",
    "AnnError",
    "AnnUnsupportedError",
    "TuningSetError",
    "EmptyTuningSetError",
    "CurationError",
    "RayExecutorError",
    "RayNotInstalledError",
    "ForeignBioclipError",
    "NameParserError",
]


class IndexerError(Exception):
    """Base class of everything the indexer and search engine raise on purpose."""


class LocationError(IndexerError, ValueError):
    """A string is not a location this project reads (see :mod:`indexer.locations`)."""


class SourceError(IndexerError):
    """A source as a whole cannot be read (missing file, malformed descriptor, ...).

    The message names the file and the problem; ``path`` is the file, when there is one.
    """

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class ItemError(IndexerError):
    """One image could not be used. Recorded as a failure; the run goes on.

    ``reason`` is a short stable code (``not-found``, ``permission-denied``, ``http-404``,
    ``truncated``, ``not-an-image``, ``too-many-pixels``, ...) used for counting failures by reason;
    ``detail`` is a human-readable message.
    """

    stage = "item"

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class FetchError(ItemError):
    """The bytes of an image could not be read or downloaded."""

    stage = "fetch"


class DecodeError(ItemError):
    """The bytes are not a usable image."""

    stage = "decode"


class CollectionError(IndexerError):
    """A collection directory is missing, damaged or used inconsistently."""


class CollectionNotFoundError(CollectionError):
    pass


class FormatVersionError(CollectionError):
    """The collection was written by a newer (or unknown) format version."""


class ModelMismatchError(CollectionError):
    """The collection was built with another model than the one asked for."""


class CollectionLockedError(CollectionError):
    """Another process is writing to the collection."""


class DiskFullError(CollectionError):
    """The disk holding a collection has no room for what was being written; nothing committed
    before is lost. ``path`` is the collection (or the folder written to), ``needed`` and ``free``
    are bytes (``needed`` an estimate of what the failed write needed)."""

    def __init__(self, message: str, path: str, needed: int, free: int):
        super().__init__(message)
        self.path = path
        self.needed = needed
        self.free = free


class QueryError(IndexerError):
    """A query cannot be answered as asked (empty text, unknown id, unreadable image, ...)."""


class FilterError(QueryError):
    """A metadata filter names an unknown column or has a value of the wrong type."""


class AnnError(IndexerError):
    """The ANN index cannot be built, searched, saved or loaded as asked."""


class AnnUnsupportedError(AnnError):
    """The operation is not supported by this index type or in this mode (e.g. ``remove`` on HNSW,
    ``add`` on an index loaded memory-mapped read-only)."""


class TuningSetError(AnnError):
    """A set of tuning queries that cannot be used: unreadable file, wrong dimension, not finite."""


class EmptyTuningSetError(TuningSetError):
    """A tuning set came out empty (an empty file, a query log with nothing of that kind, a
    collection without phrases): tuning on nothing would silently keep the recall promise for no
    one, so it is refused."""


class RayExecutorError(IndexerError):
    """The Ray executor cannot run or carry on: Ray missing, cluster unreachable, model not
    loadable in the actors, files not visible to the workers, too many failed tasks."""


class RayNotInstalledError(RayExecutorError):
    """``executor="ray"`` was asked for but the ``ray`` package (with Ray Data) is not installed."""


class CurationError(IndexerError):
    """Curation data cannot be computed, read or used (the message names the file or the reason)."""


class ForeignBioclipError(ImportError):
    """The ``bioclip`` package Python finds is not bioclip-search's own (pybioclip's, usually).

    An ImportError, so that tools which probe imports treat it as "this cannot be imported here"."""


class NameParserError(IndexerError, ImportError):
    """The scientific-name parser (the ``gbif-name-parser`` package, imported as ``nameparser``) is
    missing, or the ``nameparser`` Python finds is the unrelated PyPI package of that name (for
    people's names). The message says how to install the right one."""
