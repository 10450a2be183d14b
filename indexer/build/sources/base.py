"""The source contract shared by every kind of input (see docs/ARCHITECTURE.md, "Sources")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import pyarrow as pa

__all__ = ["Source", "ITEM_COLUMNS", "ERROR_COLUMNS", "ALT_COLUMNS"]

#: Columns every batch a source yields has.
ITEM_COLUMNS = ("key", "location", "size", "mtime")

#: Optional columns: a row whose ``error_reason`` is not null is not an image to encode but a
#: failure found while scanning (a broken symlink, a media row without a usable URL, ...); the
#: pipeline records it with its reason and goes on.
ERROR_COLUMNS = ("error_reason", "error_detail")

#: Optional: ``alt_locations`` holds other URLs of the same image, one per line, in the order to try
#: them when ``location`` cannot be downloaded (Audubon Core's good-quality and thumbnail versions);
#: the row is then stored with the alternative that worked as its ``location``.
ALT_COLUMNS = ("alt_locations",)


@runtime_checkable
class Source(Protocol):
    """Something that lists images and their metadata.

    ``scan()`` yields Arrow record batches with ``ITEM_COLUMNS`` and any of
    ``indexer.store.schema.METADATA_COLUMNS`` (plus, optionally, ``ERROR_COLUMNS``). ``key`` is unique
    within the source and stable across runs. It raises ``indexer.errors.SourceError`` when the
    source as a whole cannot be read; one bad item is a row with ``error_reason`` instead.
    """

    @property
    def name(self) -> str: ...

    def scan(self) -> Iterator[pa.RecordBatch]: ...
