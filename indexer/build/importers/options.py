"""What an import is asked to do (:class:`ImportOptions`) and what it did (:class:`ImportReport`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from indexer.build.importers.readers import ImportColumns

__all__ = ["ImportOptions", "ImportReport"]


@dataclass(frozen=True)
class ImportOptions:
    """How an import runs. ``columns`` says which columns are the id, vector, location and
    metadata (None: detected). Commits every ``commit_every`` rows or ``commit_seconds``."""

    columns: ImportColumns = field(default_factory=ImportColumns)
    kind: str | None = None  # parquet | pybioclip | clip-retrieval; None: detected per SOURCE
    batch_rows: int | None = None  # rows read at a time; None: about 64 MiB of float32 vectors
    commit_every: int = 131_072
    commit_seconds: float = 60.0
    recheck: bool = False  # read files again even when recorded as imported with the same size and time
    prune: bool = False  # retire ids of these sources that are no longer in them
    build_index: bool = True
    index_factory: str | None = None
    memory_budget: int | None = None
    recall_target: float = 0.95
    progress: bool = False


@dataclass
class ImportReport:
    """What an import did. ``renormalised`` counts vectors that were not unit length (normalised on
    the way in), ``norm_range`` their smallest and largest norm."""

    collection: str
    files: int = 0
    files_skipped: int = 0  # recorded as imported, unchanged since (not read again)
    rows: int = 0
    imported: int = 0  # new ids
    replaced: int = 0  # ids whose vector changed: the old vector is retired
    metadata_updated: int = 0
    unchanged: int = 0
    duplicates: int = 0  # rows repeating an id seen earlier in this import (the first one is kept)
    renormalised: int = 0
    norm_range: list[float] | None = None
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    replaced_by_failure: int = 0  # known ids whose new row is unusable: the old vector is retired
    pruned: int = 0
    seconds: float = 0.0
    generation: int = 0
    images: int = 0
    model: str = ""
    dimension: int = 0
    kinds: dict[str, str] = field(default_factory=dict)  # source name -> kind
    index: dict | None = None

    @property
    def failed(self) -> int:
        return sum(self.failed_by_reason.values())

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["failed"] = self.failed
        d["rows_per_second"] = round(self.rows_per_second, 1)
        return d
