"""Rows on their way into a segment: cast to the segment schema, the newest change of each id.

A bad value never loses its row: a ``year`` that does not parse becomes null (:func:`safe_cast`).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from indexer.store.generations import utcnow
from indexer.store.schema import arrow_schema

__all__ = ["conform", "safe_cast", "last_per_id"]

log = logging.getLogger(__name__)


def last_per_id(table: pa.Table) -> pa.Table:
    """``table`` sorted by id, keeping the last row buffered for each id (the newest change)."""
    n = table.num_rows
    table = table.append_column("_pos", pa.array(np.arange(n, dtype=np.int64)))
    table = table.sort_by([("id", "ascending"), ("_pos", "descending")])
    ids = table.column("id").to_numpy()
    first = np.concatenate([[True], ids[1:] != ids[:-1]]) if n else np.zeros(0, dtype=bool)
    return table.filter(pa.array(first)).drop(["_pos"])


def conform(rows: pa.Table, ids: np.ndarray) -> pa.Table:
    """Cast ``rows`` to the full segment schema, setting ``id``, and ``indexed_at`` unless given."""
    schema = arrow_schema()
    n = rows.num_rows
    now = utcnow()
    arrays = []
    for f in schema:
        if f.name == "id":
            arrays.append(pa.array(ids, pa.int64()))
        elif f.name == "indexed_at" and f.name not in rows.column_names:
            arrays.append(pa.array([now] * n, f.type))
        elif f.name in rows.column_names:
            col = rows.column(f.name)
            if col.type != f.type:
                col = safe_cast(col, f.type, f.name)
            arrays.append(col)
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def safe_cast(col: pa.ChunkedArray, to: pa.DataType, name: str) -> pa.ChunkedArray:
    """Cast, turning values that do not parse into nulls (a bad ``year`` must not lose the image)."""
    import pyarrow.compute as pc

    try:
        return col.cast(to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        stripped = pc.utf8_trim_whitespace(col)
        if pa.types.is_integer(to):
            ok = pc.match_substring_regex(stripped, r"^[+-]?\d{1,9}(\.0*)?$")
            cleaned = pc.if_else(ok, pc.replace_substring_regex(stripped, r"\.0*$", ""), pa.scalar(None, pa.string()))
            return cleaned.cast(to)
        if pa.types.is_floating(to):
            ok = pc.match_substring_regex(stripped, r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
            return pc.if_else(ok, stripped, pa.scalar(None, pa.string())).cast(to)
    log.warning("column %s: cannot convert %s to %s; stored as null", name, col.type, to)
    return pa.nulls(len(col), to)
