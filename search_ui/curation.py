"""The curation page's logic (no Streamlit): review queues over a curated collection.

A :class:`ReviewQueue` serves every session of one collection: it opens the collection's curation
data (:class:`indexer.curate.Curation`) and opens it again when ``bioclip-index curate`` has written
a newer state. Each list (misidentified, unidentified, duplicates, outliers) is a queue, best entry
first; accepted and rejected entries leave it for everyone (decisions are stored in the
collection), skipped ones only for the session that skipped them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from indexer.curate import KINDS, Curation, Entry, ListOptions
from indexer.curate.export import DWC_COLUMNS, PLAIN_COLUMNS, dwc_rows, plain_rows, write_csv
from indexer.curate.store import MANIFEST, CurationStore
from indexer.errors import CurationError

__all__ = ["ReviewQueue", "Review", "KIND_LABELS", "DECISION_LABELS"]

KIND_LABELS = {
    "misidentified": "Likely misidentified",
    "unidentified": "Unidentified: suggested names",
    "duplicates": "Duplicate groups",
    "outliers": "Outliers",
}
DECISION_LABELS = {"accepted": "Accept", "rejected": "Reject"}


@dataclass(frozen=True)
class Review:
    """What the page shows for one entry: the entry, its image(s) (hits), the neighbours that voted
    (hits with cosine and name) and examples of the suggested taxon (hits)."""

    entry: Entry
    specimen: list
    neighbours: list[tuple[Any, float, str | None]]
    examples: list
    remaining: int


class ReviewQueue:
    """Review queues over one collection's curation data (thread-safe; one per app process)."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.store = CurationStore(engine.collection)
        self._lock = threading.Lock()
        self._cur: Curation | None = None
        self._stamp: float | None = None

    def curation(self) -> Curation | None:
        """The current curation data (None: never computed for this collection)."""
        path = self.store.path / MANIFEST
        stamp = path.stat().st_mtime_ns if path.is_file() else None
        with self._lock:
            if stamp is None:
                self._cur, self._stamp = None, None
                return None
            if self._cur is None or stamp != self._stamp:
                self._cur = Curation.open(self.engine)
                self._stamp = stamp
            return self._cur

    def counts(self, options: ListOptions | None = None) -> dict[str, int]:
        cur = self.curation()
        if cur is None:
            return {}
        return {kind: len(cur.entries(kind, options or ListOptions())) for kind in KINDS}

    def entries(self, kind: str, options: ListOptions | None = None, skipped: Iterable[int] = ()) -> list[Entry]:
        cur = self.curation()
        if cur is None:
            return []
        skip = set(skipped)
        return [e for e in cur.entries(kind, options or ListOptions()) if e.id not in skip]

    def next(self, kind: str, options: ListOptions | None = None, skipped: Iterable[int] = ()) -> Review | None:
        """The best entry of ``kind`` this session has not skipped, with what to show beside it."""
        entries = self.entries(kind, options, skipped)
        if not entries:
            return None
        return self.review(entries[0], remaining=len(entries))

    def review(self, entry: Entry, *, remaining: int = 0) -> Review:
        cur = self.curation()
        if cur is None:
            raise CurationError("this collection has no curation data")
        ids = entry.members or [entry.id]
        specimen = self.engine.get(ids)
        nb = [(i, s, n) for i, s, n in entry.neighbours][:8]
        hits = {h.id: h for h in self.engine.get([i for i, _, _ in nb])}
        neighbours = [(hits[i], s, n) for i, s, n in nb if i in hits]
        examples = self.engine.get(cur.examples(entry.rank, entry.suggested, entry.id, k=6)) if entry.suggested else []
        return Review(entry, specimen, neighbours, examples, remaining)

    def decide(
        self, kind: str, image_id: int, decision: str, *, by: str | None = None, options: ListOptions | None = None
    ) -> None:
        """Record a decision on the entry of ``kind`` for ``image_id`` (looked up again, so that a
        click on a page drawn from an older state decides on what the data says now)."""
        cur = self.curation()
        if cur is None:
            raise CurationError("this collection has no curation data")
        opts = ListOptions(**{**(options or ListOptions()).__dict__, "min_confidence": -1e9, "include_decided": True})
        entry = next((e for e in cur.entries(kind, opts) if e.id == image_id), None)
        if entry is None:
            raise CurationError(f"image {image_id} is no longer in the {kind} list")
        cur.decide(entry, decision, by=by)

    def export(self, kind: str, options: ListOptions | None = None, *, dwc: bool = False) -> str:
        """The list as CSV: plain, or Darwin Core Identification rows (suggestions only)."""
        cur = self.curation()
        if cur is None:
            return ""
        opts = options or ListOptions()
        entries = cur.entries(kind, ListOptions(**{**opts.__dict__, "include_decided": True}))
        decisions = cur.decisions.latest()
        if dwc:
            return write_csv(dwc_rows(self.engine, entries, cur.model_label(), decisions), DWC_COLUMNS) or ""
        return write_csv(plain_rows(self.engine, entries, decisions), PLAIN_COLUMNS) or ""

    def describe(self) -> str | None:
        """A line about the data: when it was computed, the model, and whether it is behind."""
        cur = self.curation()
        if cur is None:
            return None
        m = cur.state.manifest
        line = f"{m.get('images', 0):,} images curated with {cur.model_label()} at generation {m.get('generation')}"
        if cur.behind:
            line += (
                f"; the collection changed since: run `bioclip-index curate {self.engine.collection.path}` to update"
            )
        return line
