"""The stored spellings of a collection's low-cardinality text columns, so that a filter compares
stored values exactly instead of folding every row.

A filter on text is case- and accent-blind: ``genus=corvus`` is ``lower("genus") IN ('corvus')``
(see :mod:`indexer.search.filter_sql`), which DuckDB evaluates on every row and cannot answer
from a row group's min/max. Over the few distinct values of a rank, an institution or a licence,
the same condition is evaluated once per value instead, and the row condition becomes
``"genus" IN ('Corvus', 'CORVUS')``: the stored spellings that match. In a table sorted by
taxonomy (the engine's, :data:`indexer.search.state.ROW_ORDER`) DuckDB then reads only the row
groups that can hold them. The two forms select the same rows by construction: the predicate is
the very SQL of the row-wise form, evaluated over a relation whose columns have the names of the
table's.

A :class:`ColumnValues` belongs to one state of the table: its lists are read once per column,
on first use, and are not updated when rows change.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from indexer.dwc.fold import FOLDED_COLUMNS
from indexer.store.schema import RANK_COLUMNS, quote_ident

__all__ = ["ColumnValues", "exact_in", "VALUE_COLUMNS", "MAX_VALUES"]

log = logging.getLogger(__name__)

#: Text columns whose distinct values are few enough to list (beyond these, a filter folds rows).
VALUE_COLUMNS: frozenset[str] = frozenset(
    {
        *RANK_COLUMNS,
        "infraspecificEpithet",
        "superfamily",
        "subfamily",
        "tribe",
        "subtribe",
        "taxonRank",
        "basisOfRecord",
        "institutionCode",
        "collectionCode",
        "country",
        "countryCode",
        "stateProvince",
        "license",
        "typeStatus",
        "mediaFormat",
    }
)

#: A column with more distinct values than this keeps the row-wise comparison.
MAX_VALUES = 65_536


class ColumnValues:
    """Distinct values of :data:`VALUE_COLUMNS` of the ``images`` relation of ``cursor()``'s
    connection. ``cursor`` is a callable returning a fresh DuckDB cursor (one per thread)."""

    def __init__(self, cursor: Any):
        self._cursor = cursor
        self._lists: dict[str, tuple[list[str], list[str | None]] | None] = {}
        self._present: set[str] | None = None
        self._lock = threading.Lock()

    def _values(self, column: str) -> tuple[list[str], list[str | None]] | None:
        with self._lock:
            if column in self._lists:
                return self._lists[column]
            cur = self._cursor()
            if self._present is None:
                self._present = {r[0] for r in cur.execute("DESCRIBE images").fetchall() if r[1] == "VARCHAR"}
            got: tuple[list[str], list[str | None]] | None = None
            if column in VALUE_COLUMNS and column in self._present:
                col = quote_ident(column)
                rows = cur.execute(
                    f"SELECT DISTINCT {col} FROM images WHERE {col} IS NOT NULL LIMIT {MAX_VALUES + 1}"
                ).fetchall()
                if len(rows) <= MAX_VALUES:
                    # The folded twin is null but where a value folds to more than lower(): read
                    # apart, it costs a scan of a mostly-null column instead of a two-column DISTINCT.
                    twin = FOLDED_COLUMNS.get(column)
                    folded: dict[str, str] = {}
                    if twin in self._present:
                        folded = dict(
                            cur.execute(
                                f"SELECT DISTINCT {col}, {quote_ident(twin)} FROM images WHERE {quote_ident(twin)} IS NOT NULL"
                            ).fetchall()
                        )
                    values = [r[0] for r in rows]
                    got = (values, [folded.get(v) for v in values])
                else:
                    log.debug("%s has over %d distinct values: filters on it fold rows", column, MAX_VALUES)
            self._lists[column] = got
            return got

    def matching(self, column: str, predicate: str, params: list) -> list[str] | None:
        """The stored values of ``column`` for which ``predicate`` (SQL over ``column`` and its
        folded twin, with ``params``) is true; None when the column's values are not listed (not
        a listed column, absent, or too many values): the caller keeps its row-wise form."""
        listed = self._values(column)
        if listed is None:
            return None
        values, twins = listed
        if not values:
            return []
        twin = FOLDED_COLUMNS.get(column)
        # The twin is always a column of the relation (null where the table has none), so that
        # a predicate naming it binds.
        rel = f"SELECT unnest(?::VARCHAR[]) AS {quote_ident(column)}" + (
            f", unnest(?::VARCHAR[]) AS {quote_ident(twin)}" if twin else ""
        )
        args: list = [values] + ([twins] if twin else [])
        rows = (
            self._cursor()
            .execute(f"SELECT {quote_ident(column)} FROM ({rel}) WHERE {predicate}", args + list(params))
            .fetchall()
        )
        return [r[0] for r in rows]


def exact_in(column: str, predicate: str, params: list, values: ColumnValues | None) -> tuple[str, list] | None:
    """``column IN (the stored values for which predicate holds)`` with its parameters (``FALSE``
    for none), or None without a list of the column's values (keep the row-wise predicate)."""
    found = values.matching(column, predicate, params) if values is not None else None
    if found is None:
        return None
    if not found:
        return "FALSE", []
    return f"{quote_ident(column)} IN ({', '.join('?' for _ in found)})", found
