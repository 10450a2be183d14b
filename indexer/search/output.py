"""A search result as data for other programs: one JSON shape and one CSV shape, shared by the
command line (``bioclip-search --json`` / ``--format csv``) and the HTTP API.

JSON is :func:`indexer.serve.payload.search_payload` (the API's answer, printed whole by
``bioclip-search --json``): how the query was understood, the notices, paging (``offset``, ``k``,
``has_more``, ``next_offset``), ``candidates`` and the ``hits``; a hit's ``extra`` (the source's
other columns) and ``verbatim`` (the publisher's originals of normalised values) are objects, never
strings (:meth:`indexer.search.results.Hit.to_dict`).

CSV (:data:`CSV_COLUMNS`, :func:`csv_rows`): the same columns in the same order whatever the hits
hold, so files from different searches line up: ``position``, ``id``, ``score``, ``location``,
the collection's metadata columns in schema order (:data:`indexer.store.schema.ALL_COLUMNS`),
``extra`` and ``verbatim`` (what the publisher wrote where the build normalised a value), both
JSON text, and ``group`` (the other members' ids, separated by spaces).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Final

from indexer.search.results import HIDDEN_FIELDS
from indexer.store.schema import ALL_COLUMNS

__all__ = ["CSV_COLUMNS", "csv_rows"]

#: The columns of the CSV output, in order (see the module docstring).
CSV_COLUMNS: Final[tuple[str, ...]] = (
    "position",
    "id",
    "score",
    "location",
    *(c for c in ALL_COLUMNS if c not in ("id", "location", "extra", "verbatim") and c not in HIDDEN_FIELDS),
    "extra",
    "verbatim",
    "group",
)


def csv_rows(payload: dict[str, Any]) -> Iterator[list[str]]:
    """The CSV header (:data:`CSV_COLUMNS`) and one row per hit of a search answer (the API's JSON,
    :func:`indexer.serve.payload.search_payload`), every value as text; ``position`` counts from
    the answer's offset (1 is the best result of the first page)."""
    yield list(CSV_COLUMNS)
    for position, hit in enumerate(payload["hits"], start=int(payload.get("offset") or 0) + 1):
        values: dict[str, Any] = {
            "position": position,
            "score": f"{float(hit['score']):.6f}",
            "group": " ".join(str(g["id"]) for g in hit.get("group") or []),
        }
        for column in CSV_COLUMNS:
            if column not in values and hit.get(column) is not None:
                value = hit[column]
                values[column] = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value
        yield ["" if values.get(c) is None else str(values[c]) for c in CSV_COLUMNS]
