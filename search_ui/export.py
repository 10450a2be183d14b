"""The current results as a plain CSV: one header row, one row per result, the search that made
them in columns of its own (so every row says where it came from, and any CSV reader opens it)."""

from __future__ import annotations

import csv
import datetime as _dt
import io
from collections.abc import Sequence
from typing import Any

from search_ui.hit_fields import hit_rank
from search_ui.state import BrowseState

__all__ = ["EXPORT_COLUMNS", "RECORD_COLUMNS", "SEARCH_COLUMNS", "export_csv"]

#: The record's columns (Darwin Core names where there is one; ``rank`` is the rank it is
#: identified to, ``media`` the image's link), in order.
RECORD_COLUMNS = (
    "id",
    "score",
    "scientificName",
    "rank",
    "vernacularName",
    "occurrenceID",
    "catalogNumber",
    "institutionCode",
    "country",
    "year",
    "license",
    "media",
)
#: The search's columns, the same in every row: the collection, the query, how it was understood,
#: the filters, the address that reopens the search (``?...``), when it was exported.
SEARCH_COLUMNS = ("collection", "query", "understood_as", "filters", "search_link", "exported_at")
#: Every column of the CSV export, in order.
EXPORT_COLUMNS = RECORD_COLUMNS + SEARCH_COLUMNS


def export_csv(
    hits: Sequence,
    state: BrowseState,
    *,
    media=None,
    collection: str | None = None,
    interpretation: str | None = None,
    image_name: str | None = None,
    now: _dt.datetime | None = None,
) -> bytes:
    """The results as UTF-8 CSV with a header row of :data:`EXPORT_COLUMNS` (nothing before it).
    The search columns repeat in every row. A cell that a spreadsheet would run as a formula is
    quoted with ``'``."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    search = [
        collection or "",
        " ".join(state.describe_query(image_name).split()),
        " ".join((interpretation or "").split()),
        state.describe_filters() or "",
        f"?{state.query_string()}",
        now.isoformat(timespec="seconds"),
    ]
    search = [_cell(v) for v in search]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(EXPORT_COLUMNS)
    scored = state.scored
    for h in hits:
        meta = h.metadata
        w.writerow(
            [
                h.id,
                f"{float(h.score):.6f}" if scored else "",
                _cell(h.scientific_name),
                _cell(hit_rank(h)),
                _cell(meta.get("vernacularName")),
                _cell(meta.get("occurrenceID")),
                _cell(meta.get("catalogNumber")),
                _cell(meta.get("institutionCode")),
                _cell(meta.get("country")),
                _cell(meta.get("year")),
                _cell(meta.get("license")),
                _cell(media.link(h) if media is not None else h.location),
                *search,
            ]
        )
    return buf.getvalue().encode("utf-8")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    s = str(v)
    if s[:1] in ("=", "+", "@", "\t", "\r") or (s[:1] == "-" and not _is_number(s)):
        return "'" + s
    return s


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
