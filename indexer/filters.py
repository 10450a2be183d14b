"""Structured metadata filters, compiled to SQL with every value bound as a parameter.

A :class:`Filter` is a conjunction of :class:`Condition` s. Conditions on the same field with
``=`` are OR-ed (a set): ``country=Kenya`` and ``country=Tanzania`` together mean "in Kenya or
Tanzania". Fields are the collection's columns (case-insensitive Darwin Core names), keys of the
``extra`` JSON object, and three special fields:

- ``taxon``: a name at any rank, scientific or vernacular; selects everything below it too;
- ``has_coordinates``: true/false;
- ``text`` is not a field: free text is a query, not a filter.

Text comparisons ignore case. Values are never formatted into SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from indexer.errors import FilterError
from indexer.schema import ALL_COLUMNS, COLUMN_TYPES, quote_ident

__all__ = ["Condition", "Filter", "parse_where", "OPS"]

OPS = ("=", "!=", ">", ">=", "<", "<=", "contains", "in")
_CLI_OPS = {"=": "=", "==": "=", "!=": "!=", ">": ">", ">=": ">=", "<": "<", "<=": "<=", "~": "contains", "~=": "contains"}
_WHERE = re.compile(r"^\s*([A-Za-z_][\w.:\- ]*?)\s*(==|!=|>=|<=|~=|=|>|<|~)\s*(.*?)\s*$", re.S)
_SPECIAL = {"taxon", "has_coordinates"}
_BOOL = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_NUMERIC = {"BIGINT": int, "INTEGER": int, "DOUBLE": float}
_HIDDEN = {"meta_hash"}


@dataclass(frozen=True)
class Condition:
    """``field op value``; for ``in``, ``value`` is a tuple."""

    field: str
    op: str
    value: Any

    def __post_init__(self):
        if self.op not in OPS:
            raise FilterError(f"unknown filter operator {self.op!r}; use one of {', '.join(OPS)}")


@dataclass(frozen=True)
class Filter:
    conditions: tuple[Condition, ...] = ()

    @classmethod
    def of(cls, *conditions: Condition) -> "Filter":
        return cls(tuple(conditions))

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any]) -> "Filter":
        """``{"country": ["Kenya", "Tanzania"], "year": (1900, 1950), "taxon": "Corvidae"}``.

        A list/set/tuple of strings is a set; a 2-tuple of numbers (either may be None) is an
        inclusive range; anything else is equality.
        """
        conds: list[Condition] = []
        for name, value in mapping.items():
            if value is None or value == "" or value == []:
                continue
            if isinstance(value, tuple) and len(value) == 2 and all(
                v is None or isinstance(v, (int, float)) for v in value
            ):
                lo, hi = value
                if lo is not None:
                    conds.append(Condition(name, ">=", lo))
                if hi is not None:
                    conds.append(Condition(name, "<=", hi))
            elif isinstance(value, (list, set, frozenset, tuple)):
                conds.append(Condition(name, "in", tuple(value)))
            else:
                conds.append(Condition(name, "=", value))
        return cls(tuple(conds))

    def __and__(self, other: "Filter") -> "Filter":
        return Filter(self.conditions + other.conditions)

    def __bool__(self) -> bool:
        return bool(self.conditions)

    def describe(self) -> str:
        parts = []
        for c in self.conditions:
            v = ", ".join(map(str, c.value)) if c.op == "in" else c.value
            parts.append(f"{c.field} {c.op} {v}")
        return "; ".join(parts)

    def to_sql(self, extra_keys: Iterable[str] = (), taxonomy=None) -> tuple[str, list, list[str]]:
        """(SQL condition, parameters, notices). Raises FilterError for an unknown field or a bad value."""
        extra_keys = set(extra_keys)
        col_lookup = {c.lower(): c for c in ALL_COLUMNS if c not in _HIDDEN}
        extra_lookup = {k.lower(): k for k in extra_keys}
        groups: dict[tuple[str, str], list[Condition]] = {}
        for c in self.conditions:
            groups.setdefault((c.field.strip().lower(), c.op if c.op != "in" else "="), []).append(c)
        clauses: list[str] = []
        params: list = []
        notices: list[str] = []
        for (fname, op), conds in groups.items():
            if fname == "taxon":
                sql, p, n = _taxon_sql(conds, taxonomy)
            elif fname == "has_coordinates":
                sql, p = _coords_sql(conds)
                n = []
            elif fname in col_lookup:
                sql, p = _column_sql(quote_ident(col_lookup[fname]), COLUMN_TYPES.get(col_lookup[fname], "VARCHAR"), op, conds)
                n = []
            elif fname in extra_lookup:
                expr = "json_extract_string(extra, ?)"
                path = '$."' + extra_lookup[fname].replace('"', '\\"') + '"'
                sql, p = _column_sql(expr, "VARCHAR", op, conds, prefix_params=[path])
                n = []
            else:
                known = sorted({*col_lookup.values(), *extra_keys, *_SPECIAL}, key=str.lower)
                raise FilterError(
                    f"no field named {conds[0].field!r} in this collection; fields: {', '.join(known)}"
                )
            clauses.append(sql)
            params.extend(p)
            notices.extend(n)
        return (" AND ".join(f"({c})" for c in clauses) or "TRUE"), params, notices


def _values(conds: Sequence[Condition]) -> list:
    out: list = []
    for c in conds:
        out.extend(c.value if c.op == "in" else [c.value])
    return out


def _convert(value: Any, typ: str, field_name: str):
    conv = _NUMERIC.get(typ)
    if conv is None:
        return str(value)
    if isinstance(value, bool):
        raise FilterError(f"{field_name} needs a number, got {value!r}")
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        raise FilterError(f"{field_name} needs a number, got {value!r}") from None
    if conv is int:
        if not number.is_integer():
            raise FilterError(f"{field_name} needs a whole number, got {value!r}")
        return int(number)
    return number


def _column_sql(expr: str, typ: str, op: str, conds: Sequence[Condition], prefix_params: list | None = None) -> tuple[str, list]:
    fname = conds[0].field
    numeric = typ in _NUMERIC
    if op == "=":
        vals = [_convert(v, typ, fname) for v in _values(conds)]
        if numeric:
            marks = ", ".join("?" for _ in vals)
            return f"{expr} IN ({marks})", (prefix_params or []) + vals
        marks = ", ".join("lower(?)" for _ in vals)
        return f"lower({expr}) IN ({marks})", (prefix_params or []) + vals
    clauses, params = [], []
    for c in conds:
        if op == "contains":
            clauses.append(f"contains(lower(CAST({expr} AS VARCHAR)), lower(?))")
            params += (prefix_params or []) + [str(c.value)]
        elif op == "!=":
            v = _convert(c.value, typ, fname)
            if numeric:
                clauses.append(f"{expr} IS DISTINCT FROM ?")
            else:
                clauses.append(f"lower({expr}) IS DISTINCT FROM lower(?)")
            params += (prefix_params or []) + [v]
        else:
            v = _convert(c.value, typ, fname)
            clauses.append(f"{expr} {op} ?")
            params += (prefix_params or []) + [v]
    return " AND ".join(clauses), params


def _coords_sql(conds: Sequence[Condition]) -> tuple[str, list]:
    v = conds[-1].value
    if isinstance(v, str):
        if v.strip().lower() not in _BOOL:
            raise FilterError(f"has_coordinates needs true or false, got {v!r}")
        v = _BOOL[v.strip().lower()]
    cond = '"decimalLatitude" IS NOT NULL AND "decimalLongitude" IS NOT NULL'
    return (cond if v else f"NOT ({cond})"), []


def _taxon_sql(conds: Sequence[Condition], taxonomy) -> tuple[str, list, list[str]]:
    clauses, params, notices = [], [], []
    for name in _values(conds):
        matches = taxonomy.resolve(str(name)) if taxonomy is not None else []
        if not matches:
            # Unknown in this collection: match it against the rank columns and the names anyway.
            cols = ["kingdom", "phylum", "class", "order", "family", "genus", "scientificName", "vernacularName"]
            clauses.append(" OR ".join(f"lower({quote_ident(c)}) = lower(?)" for c in cols))
            params += [str(name)] * len(cols)
            notices.append(f"taxon {name!r} does not occur in this collection")
            continue
        if len(matches) > 1:
            notices.append(
                f"taxon {name!r} is ambiguous; using all of: " + ", ".join(m.describe() for m in matches[:8])
            )
        ors = []
        for m in matches:
            sql, p = m.filter_sql()
            ors.append(f"({sql})")
            params += p
        clauses.append(" OR ".join(ors))
    return " OR ".join(f"({c})" for c in clauses), params, notices


def parse_where(items: Iterable[str]) -> Filter:
    """Parse CLI ``--where`` strings: ``FIELD=VALUE``, ``FIELD!=VALUE``, ``FIELD>=VALUE``,
    ``FIELD<VALUE``, ``FIELD~TEXT`` (contains). Repeating ``FIELD=`` makes a set."""
    conds = []
    for item in items:
        m = _WHERE.match(item)
        if not m or not m.group(3):
            raise FilterError(
                f"cannot read filter {item!r}: write FIELD=VALUE, FIELD>=VALUE, FIELD<=VALUE, FIELD!=VALUE or FIELD~TEXT"
            )
        conds.append(Condition(m.group(1).strip(), _CLI_OPS[m.group(2)], m.group(3)))
    return Filter(tuple(conds))
