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
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from indexer.errors import FilterError
from indexer.search.filter_sql import SPECIAL_FIELDS, available_fields, compile_conditions

if TYPE_CHECKING:  # pragma: no cover
    from indexer.search.taxonomy import Taxonomy
    from indexer.search.values import ColumnValues

__all__ = ["Condition", "Filter", "parse_where", "available_fields", "OPS", "SPECIAL_FIELDS"]

OPS: tuple[str, ...] = ("=", "!=", ">", ">=", "<", "<=", "contains", "in", "between")
#: Fields that are not columns: see the module docstring.

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
        conditions = [v for v in items if isinstance(v, Condition)]
        if len(conditions) == len(items):
            return cls(tuple(conditions))
        texts = [v for v in items if isinstance(v, str)]
        if len(texts) == len(items):
            return parse_where(texts)
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

    def to_sql(
        self, extra_keys: Iterable[str] = (), taxonomy: Taxonomy | None = None, values: ColumnValues | None = None
    ) -> tuple[str, list, list[str]]:
        """(SQL condition over the ``images`` relation, parameters, notices for the user); see
        :func:`indexer.search.filter_sql.compile_conditions`."""
        return compile_conditions(self.conditions, extra_keys, taxonomy, values)


# -- resolution ----------------------------------------------------------------------------


def _op_name(op: Any) -> str:
    if not isinstance(op, str):
        raise FilterError(f"unknown filter operator {op!r}; use one of {', '.join(OPS)}")
    return _CLI_OPS.get(op.strip(), op.strip())


# -- values --------------------------------------------------------------------------------


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
