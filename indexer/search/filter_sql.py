"""Filters compiled to SQL over the ``images`` relation, every value bound as a parameter.

See :mod:`indexer.search.filters` for what fields, operators and values mean; this module turns a
filter's conditions into ``(condition, parameters, notices)``. Values are never formatted into SQL:
quotes, ``%`` and SQL in a value are just characters of the value.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from indexer.dwc import canonical_basis, canonical_license, canonical_rank, resolve_country
from indexer.errors import FilterError
from indexer.search.taxonomy import taxa_filter_sql
from indexer.search.values import ColumnValues, exact_in
from indexer.store.schema import (
    ALL_COLUMNS,
    COLUMN_TYPES,
    FOLDED_COLUMNS,
    HIDDEN_COLUMNS,
    canonical_column,
    quote_ident,
)

if TYPE_CHECKING:  # pragma: no cover
    from indexer.search.filters import Condition
    from indexer.search.taxonomy import Taxonomy

__all__ = ["compile_conditions", "available_fields", "SPECIAL_FIELDS"]

#: Fields that are not columns: see :mod:`indexer.search.filters`.
SPECIAL_FIELDS: tuple[str, ...] = ("taxon", "has_coordinates")

_BOOL = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


_NUMERIC = {"BIGINT": int, "INTEGER": int, "DOUBLE": float}


_HIDDEN = set(HIDDEN_COLUMNS) | {"verbatim"}  # verbatim is filtered by key: verbatim.FIELD

#: Columns whose values a filter maps to their canonical spelling too (``HUMAN_OBSERVATION`` also
#: finds ``HumanObservation``): the same functions the build normalises with.
_CANONICAL = {"basisOfRecord": canonical_basis, "license": canonical_license, "taxonRank": canonical_rank}


def compile_conditions(
    conditions: Sequence[Condition],
    extra_keys: Iterable[str] = (),
    taxonomy: Taxonomy | None = None,
    values: ColumnValues | None = None,
) -> tuple[str, list, list[str]]:
    """(SQL condition over the ``images`` relation, parameters, notices for the user).

    ``extra_keys`` are the collection's extra JSON keys; ``taxonomy`` resolves ``taxon`` values
    (without it they are matched by name against the rank columns); ``values`` (the relation's
    listed column values, :mod:`indexer.search.values`) turns case-blind equality on a listed
    column into an exact comparison with the stored spellings that match (same rows). Raises :class:`FilterError`
    for an unknown field, an operator the field does not take, or a value of the wrong type. The
    condition is ``TRUE`` for no conditions. Text is compared case- and accent-blind through the
    ``bioclip_fold`` macro (:func:`indexer.dwc.install_fold` defines it on the connection).
    """
    extra_keys = [k for k in extra_keys if k]
    groups: dict[tuple[str, str], list[Condition]] = {}
    for c in conditions:
        field_key = _resolve_field(c.field, extra_keys)
        op = {"in": "=", "between": "range", ">": "range", ">=": "range", "<": "range", "<=": "range"}.get(c.op, c.op)
        if c.value is None:
            op = "null" if c.op == "=" else "notnull"
        groups.setdefault((field_key, op), []).append(c)
    clauses: list[str] = []
    params: list = []
    notices: list[str] = []
    for (field_key, op), conds in groups.items():
        kind, name = field_key.split(":", 1)
        if kind == "special" and name == "taxon":
            sql, p, n = _taxon_sql(op, conds, taxonomy, values)
            notices.extend(n)
        elif kind == "special":
            sql, p = _coords_sql(op, conds)
        elif kind == "column" and name in ("country", "countryCode") and op in ("=", "!="):
            sql, p = _country_sql(name, op, conds, values)
        elif kind == "column":
            sql, p = _column_sql(name, COLUMN_TYPES.get(name, "VARCHAR"), op, conds, values=values)
        elif kind == "verbatim":
            sql, p = _extra_sql(name, op, conds, "verbatim")
        else:
            sql, p = _extra_sql(name, op, conds)
        clauses.append(sql)
        params.extend(p)
    return (" AND ".join(f"({c})" for c in clauses) or "TRUE"), params, notices


def available_fields(extra_keys: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(name, type) of every field a filter may use: columns, extra keys, special fields."""
    out = [(c, COLUMN_TYPES.get(c, "VARCHAR").lower()) for c in ALL_COLUMNS if c not in _HIDDEN]
    cols = {c.lower() for c, _ in out}
    out += [(k, "text (extra)") for k in sorted(set(extra_keys), key=str.lower) if k and k.lower() not in cols]
    out += [("taxon", "taxon name"), ("has_coordinates", "true/false"), ("verbatim.FIELD", "text as published")]
    return out


def _resolve_field(field: str, extra_keys: Sequence[str]) -> str:
    """``column:NAME``, ``extra:KEY`` or ``special:NAME``; FilterError (listing fields) otherwise."""
    low = field.lower()
    if low in SPECIAL_FIELDS:
        return f"special:{low}"
    cols = {c.lower(): c for c in ALL_COLUMNS if c not in _HIDDEN}
    if low in cols:
        return f"column:{cols[low]}"
    canonical = canonical_column(field)
    if canonical is not None:
        return f"column:{canonical}"
    if low.startswith("verbatim.") and len(field) > 9:
        name = field.strip()[9:]
        return f"verbatim:{canonical_column(name) or name}"
    extras = {k.lower(): k for k in extra_keys}
    if low.startswith("extra.") and low[6:] in extras:
        return f"extra:{extras[low[6:]]}"
    if low in extras:
        return f"extra:{extras[low]}"
    names = [c for c in ALL_COLUMNS if c not in _HIDDEN] + sorted(set(extra_keys), key=str.lower) + list(SPECIAL_FIELDS)
    close = difflib.get_close_matches(low, [n.lower() for n in names], n=1, cutoff=0.75)
    hint = ""
    if close:
        hint = f" (did you mean {next(n for n in names if n.lower() == close[0])!r}?)"
    raise FilterError(f"no field named {field!r} in this collection{hint}; fields: {', '.join(names)}")


def _values(conds: Sequence[Condition]) -> list:
    out: list = []
    for c in conds:
        out.extend(c.value if c.op == "in" else [c.value])
    return out


def _number(value: Any, typ: str, field_name: str) -> int | float:
    conv = _NUMERIC[typ]
    if isinstance(value, bool) or value is None:
        raise FilterError(f"{field_name} needs a number, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        try:
            number = float(str(value).strip())
        except (TypeError, ValueError):
            raise FilterError(f"{field_name} needs a number, got {value!r}") from None
    if not math.isfinite(number):
        raise FilterError(f"{field_name} needs a finite number, got {value!r}")
    if conv is int:
        if not number.is_integer():
            raise FilterError(f"{field_name} needs a whole number, got {value!r}")
        if abs(number) >= 2**63:
            raise FilterError(f"{field_name}: {value!r} is out of range")
        return int(number)
    return number


def _timestamp(value: Any, field_name: str) -> _dt.datetime:
    if isinstance(value, _dt.datetime):
        return (
            value.replace(tzinfo=None)
            if value.tzinfo is None
            else value.astimezone(_dt.timezone.utc).replace(tzinfo=None)
        )
    if isinstance(value, _dt.date):
        return _dt.datetime(value.year, value.month, value.day)
    try:
        parsed = _dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(f"{field_name} needs a date like 2024-05-31 or 2024-05-31T12:00, got {value!r}") from None
    return _timestamp(parsed, field_name)


def _convert(value: Any, typ: str, field_name: str) -> Any:
    if typ in _NUMERIC:
        return _number(value, typ, field_name)
    if typ == "TIMESTAMP":
        return _timestamp(value, field_name)
    if isinstance(value, (dict, list, set, tuple)):
        raise FilterError(f"{field_name} needs a text value, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _range_clauses(
    expr: str, conds: Sequence[Condition], convert, inclusive_prefix: bool = False
) -> tuple[list[str], list]:
    """``inclusive_prefix`` (text columns): an upper bound takes in every value it begins, so that
    ``eventDate<=1950-12`` or ``..1950-12-31`` keeps ``1950-12-31T10:00`` and ``1950-12-05``."""
    clauses, params = [], []

    def upper(v):
        v = convert(v)
        return v + "\U0010ffff" if inclusive_prefix and isinstance(v, str) else v

    for c in conds:
        if c.op == "between":
            lo, hi = c.value
            if lo is not None:
                clauses.append(f"{expr} >= ?")
                params.append(convert(lo))
            if hi is not None:
                clauses.append(f"{expr} <= ?")
                params.append(upper(hi))
        else:
            clauses.append(f"{expr} {c.op} ?")
            params.append(upper(c.value) if c.op == "<=" else convert(c.value))
    return clauses, params


def _text_of(name: str) -> str:
    """The SQL compared with a folded search term: the column's folded twin where it has one
    (null where the fold is plain ``lower()``), else the lower-cased column."""
    col = quote_ident(name)
    if name in FOLDED_COLUMNS:
        return f"coalesce({quote_ident(FOLDED_COLUMNS[name])}, lower({col}))"
    return f"lower({col})"


def _column_sql(
    name: str,
    typ: str,
    op: str,
    conds: Sequence[Condition],
    text: str | None = None,
    values: ColumnValues | None = None,
) -> tuple[str, list]:
    """``name`` is a column, or (with ``text``: the SQL of its folded text) any text expression."""
    listed = values if text is None and typ == "VARCHAR" else None
    expr = quote_ident(name) if text is None else name
    text = text or _text_of(name)
    fname = conds[0].field
    numeric = typ in _NUMERIC or typ == "TIMESTAMP"
    if op == "null":
        return f"{expr} IS NULL", []
    if op == "notnull":
        return f"{expr} IS NOT NULL", []
    if op == "contains":
        if numeric:
            raise FilterError(
                f"{fname} is a {'number' if typ in _NUMERIC else 'date'}: use =, !=, <, <=, >, >= or a range, not contains"
            )
        vals = [_convert(c.value, typ, fname) for c in conds]
        # contains() on folded text: % and _ in the value are plain characters (no LIKE pattern)
        return " AND ".join(f"contains({text}, bioclip_fold(?))" for _ in vals), vals
    if op == "range":
        clauses, params = _range_clauses(expr, conds, lambda v: _convert(v, typ, fname), inclusive_prefix=not numeric)
        return " AND ".join(clauses), params
    vals = [_convert(v, typ, fname) for v in _values(conds)]
    canonical = _CANONICAL.get(name) if not numeric else None
    if canonical is not None:
        # "HUMAN_OBSERVATION" also finds rows stored as "HumanObservation" (and the other way round)
        vals = list(dict.fromkeys(vals + [c for c in map(canonical, vals) if c]))
    if op in ("=", "!=") and numeric:
        marks = ", ".join("?" for _ in vals)
        return (f"{expr} IN ({marks})" if op == "=" else f"{expr} IS NULL OR {expr} NOT IN ({marks})"), vals
    if op in ("=", "!="):
        match = f"{text} IN ({', '.join('bioclip_fold(?)' for _ in vals)})"
        exact = exact_in(name, match, vals, listed)
        sql, params = exact if exact is not None else (match, vals)
        return (sql if op == "=" else f"{expr} IS NULL OR NOT ({sql})"), params
    raise FilterError(f"operator {op!r} is not supported on {fname}")  # pragma: no cover


def _country_sql(name: str, op: str, conds: Sequence[Condition], values: ColumnValues | None) -> tuple[str, list]:
    """``country`` / ``countryCode`` = a name or a code, in any spelling (``USA``, ``United States``,
    ``US``): rows whose code is that country's, and rows whose text (a country that did not
    resolve at ingest) is the value itself."""
    vals = [_convert(v, "VARCHAR", conds[0].field) for v in _values(conds)]
    codes = sorted({c.code for c in map(resolve_country, vals) if c is not None and c.code})
    match = f"{_text_of(name)} IN ({', '.join('bioclip_fold(?)' for _ in vals)})"
    exact = exact_in(name, match, list(vals), values)
    first, params = exact if exact is not None else (match, list(vals))
    parts = [first]
    if codes:
        parts.append(f'"countryCode" IN ({", ".join("?" for _ in codes)})')
        params += codes
    match = " OR ".join(f"({p})" for p in parts)
    return (match if op == "=" else f"NOT coalesce({match}, false)"), params


def _extra_sql(key: str, op: str, conds: Sequence[Condition], column: str = "extra") -> tuple[str, list]:
    """A key of the ``extra`` (or ``verbatim``) JSON object: text, except ranges with numbers
    (compared as numbers). Text is folded per row here: extra fields have no folded twins."""
    path = '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    text = f"json_extract_string({column}, ?)"
    if op == "range":
        bounds = [v for c in conds for v in (c.value if c.op == "between" else (c.value,)) if v is not None]
        if all(_is_number(v) for v in bounds):
            expr = f"TRY_CAST({text} AS DOUBLE)"
            clauses, params = _range_clauses(expr, conds, lambda v: _number(v, "DOUBLE", conds[0].field))
        else:
            clauses, params = _range_clauses(
                text, conds, lambda v: _convert(v, "VARCHAR", conds[0].field), inclusive_prefix=True
            )
        out_params: list = []
        for p in params:
            out_params += [path, p]
        return " AND ".join(clauses), out_params
    sql, params = _column_sql(text, "VARCHAR", op, conds, text=f"bioclip_fold({text})")
    return sql, _interleave(sql, text, path, params)


def _interleave(sql: str, expr: str, path: str, values: list) -> list:
    """Parameters for ``sql`` in textual order: ``path`` for each ``?`` inside ``expr``, the next
    value for every other ``?``."""
    out: list = []
    vals = iter(values)
    i = 0
    while i < len(sql):
        if sql.startswith(expr, i):
            out.append(path)
            i += len(expr)
        elif sql[i] == "?":
            out.append(next(vals))
            i += 1
        else:
            i += 1
    return out


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return math.isfinite(float(v))
    try:
        return math.isfinite(float(str(v).strip()))
    except ValueError:
        return False


def _coords_sql(op: str, conds: Sequence[Condition]) -> tuple[str, list]:
    want: bool | None = None
    for c in conds:
        if c.op not in ("=", "!=", "in") or c.value is None:
            raise FilterError("has_coordinates takes = true or = false")
        values = c.value if c.op == "in" else (c.value,)
        for v in values:
            b = _as_bool(v)
            b = b if c.op != "!=" else not b
            if want is not None and want != b:
                return "FALSE", []
            want = b
    cond = '"decimalLatitude" IS NOT NULL AND "decimalLongitude" IS NOT NULL'
    return (cond if want else f"NOT ({cond})"), []


def _as_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _BOOL:
        return _BOOL[v.strip().lower()]
    raise FilterError(f"has_coordinates needs true or false, got {v!r}")


def _taxon_sql(
    op: str, conds: Sequence[Condition], taxonomy: Taxonomy | None, values: ColumnValues | None = None
) -> tuple[str, list, list[str]]:
    if op not in ("=", "!="):
        raise FilterError("taxon takes = (or a set of names) and !=; use a rank column (genus~corv) for text matching")
    ors, params, notices = [], [], []
    found = []
    for name in _values(conds):
        if not isinstance(name, str) or not name.strip():
            raise FilterError(f"taxon needs a name, got {name!r}")
        matches = taxonomy.resolve(name) if taxonomy is not None else []
        if not matches:
            if taxonomy is not None:
                hint = ""
                close = taxonomy.close_matches(name, 3)
                if close:
                    hint = "; did you mean " + " or ".join(m.name for m in close) + "?"
                notices.append(f"taxon {name!r} does not occur in this collection{hint}")
                continue
            # No taxonomy at hand: match the name against the rank and name columns.
            cols = ["kingdom", "phylum", "class", "order", "family", "genus", "scientificName", "vernacularName"]
            ors.append(" OR ".join(f"lower({quote_ident(c)}) = lower(?)" for c in cols))
            params += [name] * len(cols)
            continue
        if len(matches) > 1:
            notices.append(
                f"taxon {name!r} is ambiguous; using all of: " + ", ".join(m.describe() for m in matches[:8])
            )
        found += matches
    if found:
        sql, p = taxa_filter_sql(found, values)
        ors.append(sql)
        params += p
    inner = " OR ".join(f"({c})" for c in ors) or "FALSE"
    if op == "!=":
        return f"NOT ({inner})", params, notices
    return inner, params, notices
