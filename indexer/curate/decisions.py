"""Curators' decisions on the lists: accepted or rejected, kept with the collection.

``curation/decisions.json`` holds every decision (the latest per list and image wins): the list
(``kind``), the image id (for a duplicate group, its smallest id, and its members), ``accepted`` or
``rejected``, the suggestion decided on (taxon and rank), who and when, and the image's
fingerprint (its ``sha256``, or its vector's digest) at that moment. It is never written into the
source data and never deleted by ``curate --full`` (everything else in ``curation/`` is derived).

Decisions survive rebuilds and metadata edits (ids are stable). A decided image leaves the lists of
that kind while its fingerprint is the one decided on; when its pixels change (a new scan of the
specimen) the decision no longer applies, the image is curated again, and the old decision is kept
and exported as ``stale``. Skipping is not a decision: a skipped entry stays in the list.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.curate.store import CurationState, CurationStore
from indexer.errors import CurationError
from indexer.store.files import atomic_write_json
from indexer.store.generations import utc_stamp

__all__ = ["Decision", "Decisions", "DECISIONS"]

log = logging.getLogger(__name__)

DECISIONS = ("accepted", "rejected")
FILE = "decisions.json"


@dataclass(frozen=True)
class Decision:
    kind: str
    id: int
    decision: str
    suggested: str | None = None
    rank: str | None = None
    fp: int | None = None
    by: str | None = None
    at: str | None = None
    note: str | None = None
    members: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if v is not None and v != ()}
        if self.members:
            d["members"] = list(self.members)
        return d


class Decisions:
    """The decisions of one collection (read on every call: several app sessions record them)."""

    def __init__(self, store: CurationStore):
        self.store = store
        self.path = store.path / FILE

    def all(self) -> list[Decision]:
        if not self.path.is_file():
            return []
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            items = data["decisions"]
            return [Decision(**{**d, "members": tuple(d.get("members", ()))}) for d in items]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CurationError(
                f"{self.path} cannot be read ({exc}); it holds the curators' decisions: fix or move it"
            ) from exc

    def latest(self) -> dict[tuple[str, int], Decision]:
        out: dict[tuple[str, int], Decision] = {}
        for d in self.all():
            out[(d.kind, d.id)] = d
        return out

    def record(self, decision: Decision) -> Decision:
        """Add a decision (``at`` filled in) and write the file atomically, under the curation lock."""
        if decision.decision not in DECISIONS:
            raise CurationError(f"a decision is one of {', '.join(DECISIONS)}, not {decision.decision!r}")
        d = Decision(**{**decision.__dict__, "at": decision.at or utc_stamp()})
        with self.store.locked(wait=True):
            items = [x.to_dict() for x in self.all()]
            items.append(d.to_dict())
            atomic_write_json(self.path, {"format": 1, "decisions": items})
        log.info("recorded %s %s on %s %d", d.decision, d.suggested or "", d.kind, d.id)
        return d

    def in_force(self, state: CurationState) -> dict[tuple[str, int], Decision]:
        """The latest decisions whose image still has the fingerprint decided on."""
        out = {}
        for key, d in self.latest().items():
            if not is_stale(d, state):
                out[key] = d
        return out


def is_stale(d: Decision, state: CurationState) -> bool:
    row = state.rows(np.array([d.id]))[0]
    if row < 0:
        return True
    return d.fp is not None and int(state.arrays["fp"][row]) != int(d.fp)
