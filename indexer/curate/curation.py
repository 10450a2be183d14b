"""``Curation``: the lists of a curated collection, the curators' decisions, and what they are shown.

::

    from indexer.curate import Curation, ListOptions, curate
    curate("museum.collection")                       # compute, or bring up to date
    cur = Curation.open("museum.collection")
    for e in cur.entries("misidentified", ListOptions(rank="family", min_confidence=0.6)):
        print(e.id, e.label, "->", e.suggested, e.score)
    cur.decide(e, "accepted", by="A. Curator")
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from indexer.curate import lists
from indexer.curate.compute import open_engine
from indexer.curate.decisions import Decision, Decisions
from indexer.curate.evidence import Evidence
from indexer.curate.options import KINDS, ListOptions
from indexer.curate.store import CurationState, CurationStore
from indexer.errors import CurationError

__all__ = ["Curation"]

log = logging.getLogger(__name__)

_LISTS = {
    "misidentified": lists.misidentified,
    "unidentified": lists.unidentified,
    "duplicates": lists.duplicates,
    "outliers": lists.outliers,
}


class Curation:
    """The curation data of one collection as a curator uses it (read-only but for decisions)."""

    def __init__(self, engine: Any, store: CurationStore, state: CurationState):
        self.engine = engine
        self.store = store
        self.state = state
        self.evidence = Evidence.load(state, engine.collection.snapshot(state.generation))
        self.decisions = Decisions(store)

    @classmethod
    def open(cls, collection: Any, *, model: Any = None) -> Curation:
        """Open the curation data of ``collection`` (a path, Collection or SearchEngine). Raises
        CurationError when it was never computed."""
        engine = open_engine(collection, model)
        store = CurationStore(engine.collection)
        state = store.load()
        if state is None:
            raise CurationError(
                f"{engine.collection.path} has no curation data yet: run `bioclip-index curate {engine.collection.path}`"
            )
        if state.generation not in engine.collection.generation_numbers():
            log.info("the curation data covers generation %d, no longer kept; lists use it as it is", state.generation)
        return cls(engine, store, state)

    @property
    def behind(self) -> int:
        """Generations published since the data was computed (0: up to date)."""
        return max(0, self.engine.collection.latest_generation_number() - self.state.generation)

    def model_label(self) -> str:
        m = self.state.manifest.get("model") or {}
        name = m.get("name") or m.get("source") or "unknown model"
        return f"{name}@{m['revision']}" if m.get("revision") else str(name)

    def entries(self, kind: str, options: ListOptions | None = None) -> list[lists.Entry]:
        """The list ``kind`` (see :mod:`indexer.curate.lists`), best first, without the entries a
        curator decided on (unless ``options.include_decided``)."""
        if kind not in _LISTS:
            raise CurationError(f"unknown list {kind!r}; lists are {', '.join(KINDS)}")
        options = options or ListOptions()
        rows = self._rows(options.filters)
        out = _LISTS[kind](self.evidence, options, rows)
        if not options.include_decided:
            decided = {i for (k, i) in self.decisions.in_force(self.state) if k == kind}
            if decided:
                out = [e for e in out if e.id not in decided]
        return out[: options.limit] if options.limit else out

    def _rows(self, filters: tuple[str, ...] | list[str]) -> np.ndarray:
        if not filters:
            return np.arange(len(self.state.ids))
        allowed = self.engine.selected_ids(list(filters))
        rows = self.state.rows(np.asarray(allowed, dtype=np.int64))
        return np.sort(rows[rows >= 0])

    def fingerprint(self, image_id: int) -> int | None:
        row = self.state.rows(np.array([image_id]))[0]
        return None if row < 0 else int(self.state.arrays["fp"][row])

    def decide(self, entry: lists.Entry, decision: str, *, by: str | None = None, note: str | None = None) -> Decision:
        """Record ``accepted`` or ``rejected`` for ``entry``; it leaves its list."""
        return self.decisions.record(
            Decision(
                kind=entry.kind,
                id=int(entry.id),
                decision=decision,
                suggested=entry.suggested,
                rank=entry.rank,
                fp=self.fingerprint(entry.id),
                by=by,
                note=note,
                members=tuple(entry.members),
            )
        )

    def examples(self, rank: str | None, name: str | None, near: int, k: int = 6) -> list[int]:
        """Ids of up to ``k`` images labelled ``name`` at ``rank``, nearest to image ``near`` first."""
        if not rank or not name:
            return []
        code = next((c for c, n in enumerate(self.evidence.names[rank]) if n.casefold() == name.casefold()), -1)
        if code < 0:
            return []
        rows = np.flatnonzero(self.evidence.labels[rank] == code)
        ids = self.state.ids[rows]
        ids = ids[ids != near]
        if not ids.size:
            return []
        vec = self.engine.vectors([near])
        _, got = self.engine.knn(vec, k, allowed_ids=ids)
        return [int(i) for i in got[0] if i >= 0]
