"""Structured metadata filters, compiled to SQL with every value bound as a parameter.

A :class:`Filter` is a conjunction of :class:`Condition` s (``field op value``). It is immutable and
hashable, so the engine caches the ids it selects per collection generation.

Fields
------
- Every metadata column of the collection (:data:`indexer.store.schema.ALL_COLUMNS`), by its Darwin Core
  name in any case (``country``, ``institutionCode``, ``year``, ``decimalLatitude`` ...) or a common
  alias (``common_name``, ``lat``, ``catalog_number``: :data:`indexer.store.schema.DWC_TERM_LOOKUP`).
- Keys of the ``extra`` JSON object (columns a source had beyond the schema), by name or as
  ``extra.KEY``. A column of the schema wins over an extra key of the same name.
- ``taxon``: a name at any rank, scientific or vernacular, any case, resolved against the
  collection's own taxonomy; selects everything below it too. A name that is ambiguous selects every
  taxon it names (with a notice); a name the collection does not have selects nothing (with a notice).
- ``has_coordinates``: true / false (both decimal coordinates given).

Operators (:data:`OPS`)
-----------------------
``=``, ``!=``, ``>``, ``>=``, ``<``, ``<=``, ``contains`` (text contains, any case), ``in`` (a set:
the value is a tuple), ``between`` (an inclusive range: the value is a ``(low, high)`` pair, either
may be None).

How conditions combine
----------------------
- Conditions on different fields must all hold (AND).
- ``=`` / ``in`` on the same field form one set: ``country=Kenya`` with ``country=Tanzania`` means
  "in Kenya or in Tanzania".
- ``!=`` on the same field: none of the values. ``contains`` on the same field: every text occurs.
  Range conditions all hold (``year>=1900`` with ``year<1950``).
- A value of ``None`` tests for a missing value: ``= None`` "not given", ``!= None`` "given".
- ``!=`` keeps images where the field is missing (they are not Kenya); ranges and ``=`` never
  match a missing value.

Types: text comparisons ignore case (ranges on text compare as text). Numeric columns (``year``,
``decimalLatitude`` ...) need numbers: ``"1950"`` is accepted, ``"old"`` is a :class:`FilterError`,
as is a fractional year. ``indexed_at`` takes ISO dates. For an ``extra`` key, a range with a
numeric value compares numerically (values that are not numbers do not match).

Values are never formatted into SQL: quotes, ``%`` and SQL in a value are just characters of the value.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from indexer.errors import FilterError
from indexer.store.schema import ALL_COLUMNS, COLUMN_TYPES, canonical_column, quote_ident

if TYPE_CHECKING:  # pragma: no cover
    from indexer.taxonomy import Taxonomy

__all__ = ["Condition", "Filter", "parse_where", "available_fields", "OPS", "SPECIAL_FIELDS"]

OPS: tuple[str, ...] = ("=", "!=", ">", ">=", "<", "<=", "contains", "in", "between")
#: Fields that are not columns: see the module docstring.
SPECIAL_FIELDS: tuple[str, ...] = ("taxon", "has_coordinates")

_CLI_OPS = {
    "=": "=",
    "==": "=",
    "!=": "!=",
    ">": ">",
    ">=": ">=",
    "<": "<",
    "<=": "<=",
    "~": "contains",
    "~=": "contains",
}
# FIELD, operator, VALUE. A field is a name (letters, digits, _ . : - and inner spaces, for extra keys).
_WHERE = re.compile(r"^\s*([A-Za-z_][\w.:\- ]*?)\s*(==|!=|>=|<=|~=|=|>|<|~)(.*)$", re.S)
_RANGE_END = r"(\d{4}-\d{2}(?:-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?)?|[+-]?\d+(?:\.\d+)?)"
_RANGE = re.compile(rf"^\s*{_RANGE_END}?\s*\.\.\s*{_RANGE_END}?\s*$")
_BOOL = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_NUMERIC = {"BIGINT": int, "INTEGER": int, "DOUBLE": float}
_HIDDEN = {"meta_hash"}
_RANGE_OPS = (">", ">=", "<", "<=", "between")


@dataclass(frozen=True)
class Condition:
    """``field op value``. For ``in`` the value is a tuple of values; for ``between`` a
    ``(low, high)`` pair (inclusive; either may be None). Lists and sets are stored as tuples, so a
    Condition is hashable. Raises :class:`FilterError` for an unknown operator or a malformed value."""

    field: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if not isinstance(self.field, str) or not self.field.strip():
            raise FilterError("a filter needs a field name")
        if self.op not in OPS:
            raise FilterError(f"unknown filter operator {self.op!r}; use one of {', '.join(OPS)}")
        value = self.value
        if isinstance(value, (list, set, frozenset)):
            value = tuple(sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value)
        if self.op == "in":
            if not isinstance(value, tuple):
                value = (value,)
            if not value:
                raise FilterError(f"{self.field} in (): give at least one value")
        elif self.op == "between":
            if not (isinstance(value, tuple) and len(value) == 2):
                raise FilterError(f"{self.field} between needs a (low, high) pair, got {self.value!r}")
            if value == (None, None):
                raise FilterError(f"{self.field} between needs a low or a high bound")
        elif isinstance(value, tuple):
            raise FilterError(f"{self.field} {self.op} takes one value, got {len(value)}")
        elif value is None and self.op not in ("=", "!="):
            raise FilterError(f"{self.field} {self.op} needs a value")
        object.__setattr__(self, "field", self.field.strip())
        object.__setattr__(self, "value", value)

    def describe(self) -> str:
        if self.op == "in":
            return f"{self.field} in {', '.join(map(str, self.value))}"
        if self.op == "between":
            lo, hi = self.value
            return f"{self.field} {'' if lo is None else lo}..{'' if hi is None else hi}"
        if self.value is None:
            return f"{self.field} {'not given' if self.op == '=' else 'given'}"
        return f"{self.field} {self.op} {self.value}"


@dataclass(frozen=True)
class Filter:
    """A conjunction of conditions; empty (falsy) means "every image". Combine with ``&``."""

    conditions: tuple[Condition, ...] = ()

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def of(cls, *conditions: Condition) -> Filter:
        return cls(tuple(conditions))

    @classmethod
    def where(cls, field: str, op: str, value: Any) -> Filter:
        """One condition: ``Filter.where("year", "<", 1950)``."""
        return cls((Condition(field, op, value),))

    @classmethod
    def equals(cls, field: str, *values: Any) -> Filter:
        """``field`` is one of ``values`` (any case for text)."""
        if not values:
            raise FilterError(f"{field}: give at least one value")
        return cls((Condition(field, "=", values[0]) if len(values) == 1 else Condition(field, "in", tuple(values)),))

    @classmethod
    def range(cls, field: str, low: Any = None, high: Any = None) -> Filter:
        """``low <= field <= high``; either bound may be None."""
        return cls((Condition(field, "between", (low, high)),))

    @classmethod
    def contains(cls, field: str, text: str) -> Filter:
        return cls((Condition(field, "contains", text),))

    @classmethod
    def taxon(cls, *names: str) -> Filter:
        """Images of any of these taxa (any rank, scientific or vernacular), including everything below."""
        return cls.equals("taxon", *names)

    @classmethod
    def has_coordinates(cls, value: bool = True) -> Filter:
        return cls((Condition("has_coordinates", "=", bool(value)),))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> Filter:
        """``{"country": ["Kenya", "Tanzania"], "year": (1900, 1950), "taxon": "Corvidae",
        "elevation": {">=": 1000}}``.

        A list/set/frozenset is a set of values; a tuple of two numbers or None (``(1900, None)``) is an
        inclusive range, any other tuple a set; a mapping is ``{operator: value}`` (several operators
        allowed); anything else is equality. ``None``, ``""`` and empty collections are skipped (no
        condition), so a form's unset fields can be passed as they are.
        """
        if isinstance(mapping, Filter):
            return mapping
        if not isinstance(mapping, Mapping):
            raise FilterError(f"filters must be a mapping of field -> value, not {type(mapping).__name__}")
        conds: list[Condition] = []
        for name, value in mapping.items():
            if value is None or (isinstance(value, (str, list, tuple, set, frozenset, dict)) and len(value) == 0):
                continue
            if isinstance(value, Mapping):
                conds.extend(Condition(name, _op_name(op), v) for op, v in value.items())
            elif (
                isinstance(value, tuple)
                and len(value) == 2
                and any(v is not None for v in value)
                and all(v is None or (isinstance(v, (int, float, _dt.date)) and not isinstance(v, bool)) for v in value)
            ):
                conds.append(Condition(name, "between", value))
            elif isinstance(value, (list, set, frozenset, tuple)):
                conds.append(Condition(name, "in", tuple(value)))
            else:
                conds.append(Condition(name, "=", value))
        return cls(tuple(conds))

    @classmethod
    def coerce(cls, value: Filter | Mapping[str, Any] | Iterable[str] | str | None) -> Filter:
        """A Filter from what a caller may pass as ``filters``: a Filter, a mapping
        (:meth:`from_mapping`), ``--where`` strings (:func:`parse_where`) or None (no filter)."""
        if value is None:
            return cls()
        if isinstance(value, Filter):
            return value
        if isinstance(value, Mapping):
            return cls.from_mapping(value)
        if isinstance(value, str):
            return parse_where([value])
        if isinstance(value, Condition):
            return cls((value,))
        try:
            items = list(value)
        except TypeError:
            raise FilterError(
                f"filters must be a Filter, a mapping or FIELD=VALUE strings, not {type(value).__name__}"
            ) from None
        if all(isinstance(v, Condition) for v in items):
            return cls(tuple(items))
        if all(isinstance(v, str) for v in items):
            return parse_where(items)
        raise FilterError("filters must be a Filter, a mapping, Conditions or FIELD=VALUE strings")

    def __and__(self, other: Filter) -> Filter:
        return Filter(self.conditions + Filter.coerce(other).conditions)

    def __bool__(self) -> bool:
        return bool(self.conditions)

    def without(self, field: str) -> Filter:
        """This filter less every condition on ``field`` (any case)."""
        f = field.strip().lower()
        return Filter(tuple(c for c in self.conditions if c.field.lower() != f))

    def describe(self) -> str:
        return "; ".join(c.describe() for c in self.conditions)

    # -- SQL -------------------------------------------------------------------------------

    def to_sql(self, extra_keys: Iterable[str] = (), taxonomy: Taxonomy | None = None) -> tuple[str, list, list[str]]:
        """(SQL condition over the ``images`` relation, parameters, notices for the user).

        ``extra_keys`` are the collection's extra JSON keys; ``taxonomy`` resolves ``taxon``
        values (without it they are matched by name against the rank columns). Raises
        :class:`FilterError` for an unknown field, an operator the field does not take, or a value
        of the wrong type. The condition is ``TRUE`` for an empty filter.
        """
        extra_keys = [k for k in extra_keys if k]
        groups: dict[tuple[str, str], list[Condition]] = {}
        for c in self.conditions:
            field_key = _resolve_field(c.field, extra_keys)
            op = {"in": "=", "between": "range", ">": "range", ">=": "range", "<": "range", "<=": "range"}.get(
                c.op, c.op
            )
            if c.value is None:
                op = "null" if c.op == "=" else "notnull"
            groups.setdefault((field_key, op), []).append(c)
        clauses: list[str] = []
        params: list = []
        notices: list[str] = []
        for (field_key, op), conds in groups.items():
            kind, name = field_key.split(":", 1)
            if kind == "special" and name == "taxon":
                sql, p, n = _taxon_sql(op, conds, taxonomy)
                notices.extend(n)
            elif kind == "special":
                sql, p = _coords_sql(op, conds)
            elif kind == "column":
                sql, p = _column_sql(quote_ident(name), COLUMN_TYPES.get(name, "VARCHAR"), op, conds)
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
    out += [("taxon", "taxon name"), ("has_coordinates", "true/false")]
    return out


# -- resolution ----------------------------------------------------------------------------


def _op_name(op: Any) -> str:
    if not isinstance(op, str):
        raise FilterError(f"unknown filter operator {op!r}; use one of {', '.join(OPS)}")
    return _CLI_OPS.get(op.strip(), op.strip())


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


# -- values --------------------------------------------------------------------------------


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


def _column_sql(expr: str, typ: str, op: str, conds: Sequence[Condition]) -> tuple[str, list]:
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
        # contains() on lower-cased text: % and _ in the value are plain characters (no LIKE pattern)
        return " AND ".join(f"contains(lower({expr}), lower(?))" for _ in vals), vals
    if op == "range":
        clauses, params = _range_clauses(expr, conds, lambda v: _convert(v, typ, fname), inclusive_prefix=not numeric)
        return " AND ".join(clauses), params
    vals = [_convert(v, typ, fname) for v in _values(conds)]
    if op == "=":
        if numeric:
            return f"{expr} IN ({', '.join('?' for _ in vals)})", vals
        return f"lower({expr}) IN ({', '.join('lower(?)' for _ in vals)})", vals
    if op == "!=":
        if numeric:
            return f"{expr} IS NULL OR {expr} NOT IN ({', '.join('?' for _ in vals)})", vals
        return f"{expr} IS NULL OR lower({expr}) NOT IN ({', '.join('lower(?)' for _ in vals)})", vals
    raise FilterError(f"operator {op!r} is not supported on {fname}")  # pragma: no cover


def _extra_sql(key: str, op: str, conds: Sequence[Condition]) -> tuple[str, list]:
    """A key of the ``extra`` JSON object: text, except ranges with numbers (compared as numbers)."""
    path = '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    text = "json_extract_string(extra, ?)"
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
    sql, params = _column_sql(text, "VARCHAR", op, conds)
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


def _taxon_sql(op: str, conds: Sequence[Condition], taxonomy: Taxonomy | None) -> tuple[str, list, list[str]]:
    if op not in ("=", "!="):
        raise FilterError("taxon takes = (or a set of names) and !=; use a rank column (genus~corv) for text matching")
    from indexer.taxonomy import taxa_filter_sql

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
        sql, p = taxa_filter_sql(found)
        ors.append(sql)
        params += p
    inner = " OR ".join(f"({c})" for c in ors) or "FALSE"
    if op == "!=":
        return f"NOT ({inner})", params, notices
    return inner, params, notices


def _range_key(end: str):
    """A range end for ordering: a number as a number, a date as its (ISO, so sortable) text."""
    try:
        return (0, float(end), "")
    except ValueError:
        return (1, 0.0, end)


def parse_where(items: Iterable[str]) -> Filter:
    """Parse CLI ``--where`` strings into a Filter.

    ``FIELD=VALUE``, ``FIELD!=VALUE``, ``FIELD>=VALUE``, ``FIELD>VALUE``, ``FIELD<=VALUE``,
    ``FIELD<VALUE``, ``FIELD~TEXT`` (contains), ``FIELD=LOW..HIGH`` (inclusive range of numbers or dates, either
    end may be left out: ``year=..1950``). ``FIELD=`` with nothing after it means "not given",
    ``FIELD!=`` "given". Repeating ``FIELD=`` makes a set. Everything after the operator is the
    value, quotes included.
    """
    conds = []
    for item in items:
        if not isinstance(item, str):
            raise FilterError(f"a --where filter is text like country=Kenya, not {item!r}")
        m = _WHERE.match(item)
        if not m:
            raise FilterError(
                f"cannot read filter {item!r}: write FIELD=VALUE, FIELD>=VALUE, FIELD<=VALUE, FIELD!=VALUE, "
                "FIELD~TEXT or FIELD=LOW..HIGH"
            )
        field, op, value = m.group(1).strip(), _CLI_OPS[m.group(2)], m.group(3).strip()
        if not value:
            if op not in ("=", "!="):
                raise FilterError(f"filter {item!r} has no value after {m.group(2)!r}")
            conds.append(Condition(field, op, None))
            continue
        if value[:1] in ("<", ">", "=", "!", "~") and not (op == "=" and value[:1] == "="):
            raise FilterError(
                f"cannot read filter {item!r}: {m.group(2) + value[:1]!r} is not an operator; use =, !=, >, >=, <, <=, "
                "~ (contains) or FIELD=LOW..HIGH"
            )
        r = _RANGE.match(value) if op == "=" else None
        if r and (r.group(1) or r.group(2)):
            lo, hi = r.group(1), r.group(2)
            if lo and hi and _range_key(lo) > _range_key(hi):
                raise FilterError(f"filter {item!r}: the range {lo}..{hi} is empty; write LOW..HIGH")
            conds.append(Condition(field, "between", (lo, hi)))
            continue
        conds.append(Condition(field, op, value))
    return Filter(tuple(conds))
