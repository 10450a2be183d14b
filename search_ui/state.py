"""What the search page shows, as one frozen value: :class:`BrowseState`, its transitions, its URL.

The page keeps one ``BrowseState`` per session; every widget and button turns it into a new one with
a transition defined here (``search_text``, ``more_like``, ``with_values``, ``without_filter`` ...),
and it round-trips losslessly through URL query parameters (``?q=TEXT`` plus one parameter per
filter; a repeated parameter is a set of values), so a shared link runs the same search.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, urlencode

from indexer.search import Condition, Filter
from indexer.store.schema import RANK_COLUMNS, RANKS

__all__ = [
    "BrowseState",
    "FilterChip",
    "FilterSpec",
    "FILTERS",
    "FACET_FIELDS",
    "COORDS",
    "K_CHOICES",
    "DEFAULT_K",
    "VIEWS",
    "TABS",
    "MODES",
    "filter_label",
    "filter_spec",
]

#: Results fetched per search (facets, map, chart and export describe these); choices in the app.
K_CHOICES = (50, 100, 200, 500, 1000)
DEFAULT_K = 200
VIEWS = ("grid", "table", "map", "taxa")
TABS = ("search", "collection")
MODES = ("text", "like", "image")
#: The coordinates filter's choices, as the sidebar words them.
COORDS: dict[str, bool | None] = {"any": None, "with coordinates": True, "without coordinates": False}


@dataclass(frozen=True)
class FilterSpec:
    """One sidebar filter: its URL parameter, the collection column or filter field, a label, and
    its kind: ``multi`` (a set of values), ``range`` (inclusive numbers) or ``bool``."""

    param: str
    field: str
    label: str
    kind: str = "multi"


_RANK_FILTERS = tuple(
    FilterSpec(rank, "taxon" if rank == "species" else col, rank.capitalize()) for rank, col in zip(RANKS, RANK_COLUMNS)
)
#: Facets over metadata columns (besides the ranks), in sidebar order.
FACET_FIELDS: tuple[FilterSpec, ...] = (
    FilterSpec("institutionCode", "institutionCode", "Institution"),
    FilterSpec("collectionCode", "collectionCode", "Collection code"),
    FilterSpec("country", "country", "Country"),
    FilterSpec("basisOfRecord", "basisOfRecord", "Basis of record"),
    FilterSpec("license", "license", "License"),
)
FILTERS: tuple[FilterSpec, ...] = (
    *_RANK_FILTERS,
    *FACET_FIELDS,
    FilterSpec("year", "year", "Year", "range"),
    FilterSpec("has_coordinates", "has_coordinates", "Coordinates", "bool"),
)
_FILTER_BY_PARAM = {f.param: f for f in FILTERS}
_MULTI_PARAMS = tuple(f.param for f in FILTERS if f.kind == "multi")

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


@dataclass(frozen=True)
class FilterChip:
    """One selected value of a filter, as the page shows it (a button that removes it)."""

    param: str
    value: str | None
    text: str


@dataclass(frozen=True)
class BrowseState:
    """Everything that decides what the search page shows.

    ``mode``: ``text`` (``q``), ``like`` (images similar to indexed image ``like``) or ``image``
    (an uploaded picture, which is never in the URL). ``values`` maps each multi-valued filter
    parameter (see :data:`FILTERS`) to its selected values; ``year`` is an inclusive range (either
    end may be None); ``coords`` True/False keeps only images with/without coordinates.
    """

    q: str = ""
    mode: str = "text"
    like: int | None = None
    values: tuple[tuple[str, tuple[str, ...]], ...] = ()
    year: tuple[int | None, int | None] | None = None
    coords: bool | None = None
    k: int = DEFAULT_K
    page: int = 1
    view: str = "grid"
    detail: int | None = None
    tab: str = "search"
    collection: str | None = None

    # -- filters -------------------------------------------------------------------------

    def selected(self, param: str) -> tuple[str, ...]:
        return dict(self.values).get(param, ())

    def with_values(self, param: str, values: Iterable[str]) -> BrowseState:
        """A copy with ``param``'s selection replaced (empty removes it), back on page 1."""
        if param not in _MULTI_PARAMS:
            raise ValueError(f"{param!r} is not a multi-valued filter")
        vals = tuple(dict.fromkeys(str(v) for v in values if str(v) != ""))
        current = dict(self.values)
        if vals:
            current[param] = vals
        else:
            current.pop(param, None)
        ordered = tuple((p, current[p]) for p in _MULTI_PARAMS if p in current)
        return replace(self, values=ordered, page=1)

    def has_filters(self) -> bool:
        return bool(self.values) or self.year is not None or self.coords is not None

    def to_filter(self) -> Filter:
        """The engine filter for this state's selections."""
        conds: list[Condition] = []
        for param, vals in self.values:
            spec = _FILTER_BY_PARAM[param]
            conds.append(Condition(spec.field, "in", tuple(vals)))
        if self.year is not None:
            lo, hi = self.year
            if lo is not None:
                conds.append(Condition("year", ">=", int(lo)))
            if hi is not None:
                conds.append(Condition("year", "<=", int(hi)))
        if self.coords is not None:
            conds.append(Condition("has_coordinates", "=", bool(self.coords)))
        return Filter(tuple(conds))

    def describe_filters(self) -> str:
        """The filters in words, for exports and captions ("" when there are none)."""
        parts = [f"{_FILTER_BY_PARAM[param].label.lower()}: {' or '.join(vals)}" for param, vals in self.values]
        if self.year is not None:
            parts.append(_year_text(self.year))
        if self.coords is not None:
            parts.append(_coords_text(self.coords))
        return "; ".join(parts)

    def filter_chips(self) -> list[FilterChip]:
        """Each selected filter value (the year range and the coordinates choice as one each), as
        the page lists them above the results, worded with the sidebar's labels."""
        chips = [FilterChip(p, v, f"{filter_label(p)}: {v}") for p, vals in self.values for v in vals]
        if self.year is not None:
            chips.append(FilterChip("year", None, _year_text(self.year)))
        if self.coords is not None:
            chips.append(FilterChip("has_coordinates", None, _coords_text(self.coords)))
        return chips

    def describe_query(self, image_name: str | None = None) -> str:
        if self.mode == "image":
            return f"uploaded picture {image_name}" if image_name else "an uploaded picture"
        if self.mode == "like" and self.like is not None:
            return f"images like image {self.like}"
        return f"text: {self.q}" if self.q.strip() else "no query (browsing)"

    # -- URL -----------------------------------------------------------------------------

    def to_params(self) -> dict[str, list[str]]:
        """URL query parameters: ``q`` or ``like``, one parameter per filter (repeated for a set),
        and the view when it is not the default. An uploaded picture is not in the URL."""
        out: dict[str, list[str]] = {}
        if self.mode == "text" and self.q.strip():
            out["q"] = [self.q]
        elif self.mode == "like" and self.like is not None:
            out["like"] = [str(self.like)]
        for param, vals in self.values:
            out[param] = list(vals)
        if self.year is not None:
            lo, hi = self.year
            out["year"] = [f"{'' if lo is None else lo}..{'' if hi is None else hi}"]
        if self.coords is not None:
            out["has_coordinates"] = ["true" if self.coords else "false"]
        if self.k != DEFAULT_K:
            out["k"] = [str(self.k)]
        if self.page != 1:
            out["page"] = [str(self.page)]
        if self.view != "grid":
            out["view"] = [self.view]
        if self.detail is not None:
            out["detail"] = [str(self.detail)]
        if self.tab != "search":
            out["tab"] = [self.tab]
        if self.collection:
            out["collection"] = [self.collection]
        return out

    def query_string(self) -> str:
        """``to_params`` as a URL query string (without the ``?``)."""
        return urlencode([(k, v) for k, vals in self.to_params().items() for v in vals])

    @classmethod
    def from_query_string(cls, qs: str) -> tuple[BrowseState, list[str]]:
        return cls.from_params(parse_qs(qs.lstrip("?"), keep_blank_values=True))

    @classmethod
    def from_params(cls, params: Mapping[str, str | Sequence[str]]) -> tuple[BrowseState, list[str]]:
        """Read URL parameters leniently: a value that cannot be used is dropped and explained in
        the returned notices; unknown parameters are ignored."""
        notices: list[str] = []

        def values(name: str) -> list[str]:
            v = params.get(name)
            if v is None:
                return []
            return [v] if isinstance(v, str) else [str(x) for x in v]

        def last(name: str) -> str | None:
            vals = values(name)
            return vals[-1] if vals else None

        def integer(name: str, lo: int | None = None) -> int | None:
            raw = last(name)
            if raw is None or raw.strip() == "":
                return None
            try:
                n = int(raw.strip())
            except ValueError:
                notices.append(f"ignored {name}={raw!r}: not a whole number")
                return None
            if lo is not None and n < lo:
                notices.append(f"ignored {name}={raw!r}: must be at least {lo}")
                return None
            return n

        def choice(name: str, allowed: Sequence[str]) -> str | None:
            raw = last(name)
            if raw and raw not in allowed:
                notices.append(f"ignored {name}={raw!r}: use one of {', '.join(allowed)}")
                return None
            return raw or None

        state = cls()
        q = last("q") or ""
        like = integer("like", 0)
        if like is not None:
            state = replace(state, mode="like", like=like, q=q)
        else:
            state = replace(state, q=q)
        for param in _MULTI_PARAMS:
            vals = [v for v in values(param) if v.strip() != ""]
            if vals:
                state = state.with_values(param, vals)
        raw_year = last("year")
        if raw_year:
            parsed = _parse_year(raw_year)
            if parsed is None:
                notices.append(f"ignored year={raw_year!r}: write YEAR, FROM..TO, FROM.. or ..TO")
            else:
                state = replace(state, year=parsed)
        raw_coords = last("has_coordinates")
        if raw_coords:
            low = raw_coords.strip().lower()
            if low in _TRUE:
                state = replace(state, coords=True)
            elif low in _FALSE:
                state = replace(state, coords=False)
            else:
                notices.append(f"ignored has_coordinates={raw_coords!r}: use true or false")
        k = integer("k", 1)
        given: dict[str, Any] = {
            # k snaps to the nearest choice the page offers at or above it
            "k": None if k is None else next((c for c in sorted(K_CHOICES) if c >= k), max(K_CHOICES)),
            "page": integer("page", 1),
            "view": choice("view", VIEWS),
            "detail": integer("detail", 0),
            "tab": choice("tab", TABS),
            "collection": last("collection") or None,
        }
        return replace(state, **{name: v for name, v in given.items() if v is not None}), notices

    # -- transitions the page's widgets and buttons make ---------------------------------------

    def search_text(self, q: str | None) -> BrowseState:
        return replace(self, q=q or "", mode="text", like=None, page=1, detail=None, tab="search")

    def more_like(self, image_id: int) -> BrowseState:
        return replace(self, mode="like", like=int(image_id), page=1, detail=None, tab="search")

    def with_upload(self) -> BrowseState:
        return replace(self, mode="image", like=None, page=1, detail=None, tab="search")

    def upload_changed(self, upload: Any) -> BrowseState:
        """A file was uploaded (search by it) or removed (back to the words)."""
        return self.with_upload() if upload is not None else replace(self, mode="text", page=1)

    def with_detail(self, image_id: int) -> BrowseState:
        return replace(self, detail=int(image_id), tab="search")

    def without_detail(self) -> BrowseState:
        return replace(self, detail=None)

    def without_filter(self, param: str, value: str | None = None) -> BrowseState:
        """``value`` of ``param`` unselected (the year range or the coordinates choice as a whole)."""
        if param == "year":
            return replace(self, year=None, page=1)
        if param == "has_coordinates":
            return replace(self, coords=None, page=1)
        return self.with_values(param, [v for v in self.selected(param) if v != value])

    def without_filters(self) -> BrowseState:
        return replace(self, values=(), year=None, coords=None, page=1)

    def with_year(self, full: Sequence[int], chosen: Sequence[int]) -> BrowseState:
        """The year slider moved to ``chosen`` (low, high); the collection's ``full`` range is no filter."""
        lo, hi = chosen
        return replace(self, year=None if (lo, hi) == tuple(full) else (int(lo), int(hi)), page=1)

    def with_coords(self, label: str) -> BrowseState:
        return replace(self, coords=COORDS[label], page=1)

    def with_k(self, k: int) -> BrowseState:
        return replace(self, k=int(k), page=1)

    def with_view(self, view: str) -> BrowseState:
        return replace(self, view=view)

    def with_tab(self, tab: str) -> BrowseState:
        return replace(self, tab=tab, detail=None)

    def with_page(self, page: int) -> BrowseState:
        return replace(self, page=max(1, int(page)))

    def for_collection(self, collection: str | None) -> BrowseState:
        """A fresh search of another collection (None: the first one). The words of a text search
        go along, to compare collections; filters and ids do not."""
        return BrowseState(q=self.q if self.mode == "text" else "", collection=collection)

    # -- what the page derives from the state ---------------------------------------------------

    def search_key(self) -> BrowseState:
        """This state less what only decides how results are shown (page, view, detail, tab): equal
        keys run the same search, so a page caches its result under it."""
        return replace(self, page=1, view="grid", detail=None, tab="search")

    @property
    def scored(self) -> bool:
        """Whether the results are ranked by similarity (not a listing of every image)."""
        return self.mode != "text" or bool(self.q.strip())

    def widget_values(self) -> dict[str, Any]:
        """What each of the page's widgets shows for this state (by widget key); the year slider is
        left out (it is seeded from the collection's range)."""
        out: dict[str, Any] = {"w_q": self.q}
        out.update({f"w_f_{spec.param}": list(self.selected(spec.param)) for spec in FILTERS if spec.kind == "multi"})
        out["w_coords"] = next(k for k, v in COORDS.items() if v == self.coords)
        out.update(w_k=self.k, w_view=self.view, w_tab=self.tab)
        return out


def _parse_year(raw: str) -> tuple[int | None, int | None] | None:
    raw = raw.strip()
    try:
        if ".." in raw:
            lo_s, hi_s = raw.split("..", 1)
            lo = int(lo_s) if lo_s.strip() else None
            hi = int(hi_s) if hi_s.strip() else None
        else:
            lo = hi = int(raw)
    except ValueError:
        return None
    if lo is None and hi is None:
        return None
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    return lo, hi


def filter_label(param: str) -> str:
    """The sidebar's label of a filter parameter (``institutionCode`` -> ``Institution``)."""
    spec = _FILTER_BY_PARAM.get(param)
    return spec.label if spec is not None else param


def filter_spec(param: str) -> FilterSpec:
    return _FILTER_BY_PARAM[param]


def _year_text(year: tuple[int | None, int | None]) -> str:
    lo, hi = year
    return f"year: {lo if lo is not None else '…'}–{hi if hi is not None else '…'}"


def _coords_text(coords: bool) -> str:
    return "with coordinates" if coords else "without coordinates"
