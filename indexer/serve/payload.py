"""Results as JSON: the one mapping that the HTTP API and ``bioclip-search`` (directly or through
a server) both print, so that the two give the same output.

- :func:`jsonable`: plain JSON values (dates as ISO text, NaN as null, numpy scalars as numbers).
- :func:`search_payload`: a :class:`indexer.search.SearchResult` as the API answers it.
- :func:`redact`: a public server leaves out where files are on its disks (local locations,
  keys and folder-named sources); a user's own background server keeps them.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import math
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["jsonable", "search_payload", "hit_payload", "redact", "redact_hit", "PAYLOAD_KEYS"]

#: The keys of a search answer, in order.
PAYLOAD_KEYS = (
    "interpretation",
    "query_kind",
    "recall",
    "searched_as",
    "notices",
    "prompts",
    "alternatives",
    "candidates",
    "generation",
    "k",
    "offset",
    "has_more",
    "next_offset",
    "fields",
    "hits",
)


def jsonable(value: Any) -> Any:
    """``value`` with every part a plain JSON value: dict keys as text, tuples as lists, dates and
    times as ISO 8601 text, Decimals and numpy numbers as numbers, NaN and infinities as null,
    bytes as text (UTF-8, replacing what does not decode)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return jsonable(float(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            return jsonable(item())
        except (TypeError, ValueError):
            pass
    tolist = getattr(value, "tolist", None)  # numpy arrays
    if callable(tolist):
        return jsonable(tolist())
    return str(value)


def hit_payload(hit: Any) -> dict[str, Any]:
    """One hit: ``id``, ``score``, ``location``, every non-empty metadata field (schema order) and,
    when grouped, ``group``."""
    return jsonable(hit.to_dict())


def search_payload(result: Any, *, k: int, offset: int) -> dict[str, Any]:
    """A search answer: how the query was understood, its kind and the recall figure and
    parameters that applied to it (``query_kind``, ``recall``, ``searched_as``; see
    :meth:`indexer.search.SearchResult.to_dict`), notices, the page (``k`` after ``offset``)
    with ``has_more`` and ``next_offset``, the metadata ``fields`` the hits have (schema order:
    the columns of a CSV of them) and the ``hits``."""
    from indexer.store.schema import ALL_COLUMNS

    hits = [hit_payload(h) for h in result.hits]
    present = {key for h in hits for key in h}
    columns = [c for c in ALL_COLUMNS if c not in ("id", "location", "meta_hash") and c in present]
    base = result.to_dict()
    out = {
        "interpretation": base["interpretation"],
        "query_kind": base["query_kind"],
        "recall": base["recall"],
        "searched_as": base["searched_as"],
        "notices": base["notices"],
        "prompts": base["prompts"],
        "alternatives": base["alternatives"],
        "candidates": base["candidates"],
        "generation": base["generation"],
        "k": int(k),
        "offset": int(offset),
        "has_more": bool(base["has_more"]),
        "next_offset": int(offset) + int(k) if base["has_more"] else None,
        "fields": columns,
        "hits": hits,
    }
    return jsonable(out)


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def redact_hit(hit: dict[str, Any]) -> dict[str, Any]:
    """A hit without the server's own paths: a local ``location`` or ``key`` goes, a source named
    after its folder keeps only the folder's name. URLs stay."""
    out = dict(hit)
    for name in ("location", "key"):
        if name in out and not _is_url(out[name]):
            del out[name]
    src = out.get("source")
    if isinstance(src, str) and os.path.isabs(src):
        out["source"] = os.path.basename(src.rstrip(os.sep)) or src
    if isinstance(out.get("group"), list):
        out["group"] = [redact_hit(g) for g in out["group"]]
    return out


def redact(payload: dict[str, Any]) -> dict[str, Any]:
    """A search answer with every hit redacted (see :func:`redact_hit`)."""
    out = dict(payload)
    out["hits"] = [redact_hit(h) for h in payload.get("hits", [])]
    out["fields"] = [f for f in payload.get("fields", []) if f != "key" or any("key" in h for h in out["hits"])]
    return out
