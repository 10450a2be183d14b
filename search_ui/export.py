"""The current results as CSV, headed by the query and filters that made them."""

from __future__ import annotations

import csv
import datetime as _dt
import io
from collections.abc import Sequence
from typing import Any

from search_ui.state import BrowseState

__all__ = ["EXPORT_COLUMNS", "export_csv"]

#: Columns of the CSV export, in order.
EXPORT_COLUMNS = ("id", "score", "occurrenceID", "catalogNumber", "scientificName", "media", "license")


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
    """The results as UTF-8 CSV. It starts with ``#`` comment lines that record the collection,
    the query, how it was understood, the filters and the URL parameters that reopen the search
    (``pandas.read_csv(..., comment="#")`` skips them), then a header row of
    :data:`EXPORT_COLUMNS`. A cell that a spreadsheet would run as a formula is quoted with ``'``."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    buf = io.StringIO()
    lines = [
        "bioclip-search export",
        f"collection: {collection}" if collection else None,
        f"query: {state.describe_query(image_name)}",
        f"understood as: {interpretation}" if interpretation else None,
        f"filters: {state.describe_filters() or 'none'}",
        f"url: ?{state.query_string()}",
        f"results: {len(hits)}",
        f"exported: {now.isoformat(timespec='seconds')}",
    ]
    for line in lines:
        if line is not None:
            buf.write("# " + " ".join(line.split()) + "\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(EXPORT_COLUMNS)
    scored = state.scored
    for h in hits:
        meta = h.metadata
        w.writerow(
            [
                h.id,
                f"{float(h.score):.6f}" if scored else "",
                _cell(meta.get("occurrenceID")),
                _cell(meta.get("catalogNumber")),
                _cell(h.scientific_name),
                _cell(media.link(h) if media is not None else h.location),
                _cell(meta.get("license")),
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
