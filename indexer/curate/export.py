"""The lists out: a plain CSV / JSON / table, and a Darwin Core Identification extension CSV.

The Darwin Core file has one row per suggestion (misidentified and unidentified lists), the terms of
the Identification class (https://dwc.tdwg.org/terms/#identification) a collections database
imports as an identification history: ``occurrenceID`` and ``catalogNumber`` (the record),
``scientificName`` and ``taxonRank`` (the suggestion), ``identifiedBy`` (this tool and the model
with its revision, or the curator who accepted it), ``dateIdentified`` (ISO 8601),
``identificationRemarks`` (the scores and the evidence), ``identificationVerificationStatus``
(``unverified`` for a suggestion nobody reviewed, ``verified`` for one a curator accepted). Rejected
suggestions are not identifications and are left out (the plain CSV has them, with the decision).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
from collections.abc import Iterable
from typing import Any

from indexer._version import __version__
from indexer.curate.lists import Entry

__all__ = ["DWC_COLUMNS", "PLAIN_COLUMNS", "plain_rows", "dwc_rows", "write_csv", "entry_dict"]

DWC_COLUMNS = (
    "occurrenceID",
    "catalogNumber",
    "institutionCode",
    "scientificName",
    "taxonRank",
    "identifiedBy",
    "dateIdentified",
    "identificationRemarks",
    "identificationVerificationStatus",
    "identificationQualifier",
)
PLAIN_COLUMNS = (
    "kind",
    "id",
    "score",
    "label",
    "start_rank",
    "suggested",
    "rank",
    "neighbour_share",
    "zeroshot",
    "alternatives",
    "neighbours",
    "members",
    "decision",
    "catalogNumber",
    "occurrenceID",
    "institutionCode",
    "source",
    "location",
)


def entry_dict(e: Entry) -> dict[str, Any]:
    d = {k: v for k, v in e.__dict__.items() if v not in (None, [], {})}
    if e.neighbours:
        d["neighbours"] = [{"id": i, "cosine": s, "name": n} for i, s, n in e.neighbours]
    if e.alternatives:
        d["alternatives"] = [{"name": n, "probability": p} for n, p in e.alternatives]
    return d


def _meta(engine: Any, entries: list[Entry]) -> dict[int, Any]:
    ids = sorted({e.id for e in entries})
    return {h.id: h for h in engine.get(ids)} if ids else {}


def plain_rows(engine: Any, entries: list[Entry], decisions: dict | None = None) -> list[dict[str, Any]]:
    meta = _meta(engine, entries)
    rows = []
    for e in entries:
        h = meta.get(e.id)
        d = (decisions or {}).get((e.kind, e.id))
        rows.append(
            {
                "kind": e.kind,
                "id": e.id,
                "score": e.score,
                "label": e.label,
                "start_rank": e.start_rank,
                "suggested": e.suggested,
                "rank": e.rank,
                "neighbour_share": e.neighbour_share,
                "zeroshot": e.zeroshot,
                "alternatives": "; ".join(f"{n} {p:.3f}" for n, p in e.alternatives),
                "neighbours": "; ".join(f"{i} {s:.3f} {n or '-'}" for i, s, n in e.neighbours[:5]),
                "members": " ".join(map(str, e.members)),
                "decision": d.decision if d else None,
                "catalogNumber": h.get("catalogNumber") if h else None,
                "occurrenceID": h.get("occurrenceID") if h else None,
                "institutionCode": h.get("institutionCode") if h else None,
                "source": h.get("source") if h else None,
                "location": h.location if h else None,
            }
        )
    return rows


def _remarks(e: Entry) -> str:
    parts = [f"bioclip-search curation, list {e.kind}, score {e.score:.3f}"]
    if e.start_rank and e.kind == "misidentified":
        parts.append(f"recorded {e.label} disagrees from rank {e.start_rank}")
    if e.neighbour_share is not None:
        parts.append(f"neighbour vote {e.neighbour_share:.2f}")
    if e.zeroshot is not None:
        parts.append(f"zero-shot probability {e.zeroshot:.2f}")
    if e.alternatives:
        parts.append("alternatives " + ", ".join(f"{n} {p:.2f}" for n, p in e.alternatives))
    voters = [str(i) for i, _, n in e.neighbours if n][:5]
    if voters:
        parts.append("neighbour ids " + " ".join(voters))
    return "; ".join(parts)


def dwc_rows(
    engine: Any, entries: Iterable[Entry], model_label: str, decisions: dict | None = None, *, today: str | None = None
) -> list[dict[str, Any]]:
    """Darwin Core Identification rows of the suggestions in ``entries`` (see the module docstring);
    ``decisions``: (kind, id) -> Decision, accepted ones verified, rejected ones left out."""
    entries = [e for e in entries if e.kind in ("misidentified", "unidentified") and e.suggested]
    meta = _meta(engine, entries)
    tool = f"bioclip-search {__version__} curation ({model_label})"
    day = today or _dt.date.today().isoformat()
    rows = []
    for e in entries:
        d = (decisions or {}).get((e.kind, e.id))
        if d is not None and d.decision == "rejected":
            continue
        h = meta.get(e.id)
        accepted = d if d is not None and d.decision == "accepted" else None
        rows.append(
            {
                "occurrenceID": (h.get("occurrenceID") or h.get("recordID")) if h else None,
                "catalogNumber": h.get("catalogNumber") if h else None,
                "institutionCode": h.get("institutionCode") if h else None,
                "scientificName": e.suggested,
                "taxonRank": e.rank,
                "identifiedBy": f"{accepted.by} (accepted a suggestion of {tool})"
                if accepted and accepted.by
                else tool,
                "dateIdentified": accepted.at[:10] if accepted and accepted.at else day,
                "identificationRemarks": _remarks(e) + (f"; accepted on {accepted.at}" if accepted else ""),
                "identificationVerificationStatus": "verified" if accepted else "unverified",
                "identificationQualifier": None if accepted or e.score >= 0.9 else "cf.",
            }
        )
    return rows


def write_csv(rows: list[dict[str, Any]], columns: Iterable[str], out: Any = None) -> str | None:
    """Rows as CSV (UTF-8, a header, every column quoted as needed) to ``out`` (a text file), or
    returned as text."""
    buf = out if out is not None else io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return None if out is not None else buf.getvalue()


def to_json(entries: list[Entry], rows: list[dict[str, Any]]) -> str:
    return json.dumps(
        [{**entry_dict(e), **{k: v for k, v in r.items() if k not in entry_dict(e)}} for e, r in zip(entries, rows)],
        indent=2,
        default=str,
    )
