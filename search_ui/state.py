"""What the search page shows, as one frozen value: :class:`BrowseState`, its transitions, its URL.

The page keeps one ``BrowseState`` per session; every widget and button turns it into a new one with
a transition defined here (``search_text``, ``more_like``, ``with_values``, ``without_filter`` ...),
and it round-trips losslessly through URL query parameters (``?q=TEXT`` plus one parameter per
filter; a repeated parameter is a set of values), so a shared link runs the same search.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, urlencode

from indexer.search import Condition, Filter
from search_ui.filter_specs import (
    FACET_FIELDS,
    FILTERS,
    FilterSpec,
    filter_label,
    filter_spec,
)
from search_ui.filter_specs import (
    FILTER_BY_PARAM as _FILTER_BY_PARAM,
)
from search_ui.filter_specs import (
    MULTI_PARAMS as _MULTI_PARAMS,
)

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
    "BASEMAPS",
    "QueryPart",
    "filter_label",
    "filter_spec",
]

#: Results fetched per search (facets, map, chart and export describe these); choices in the app.
K_CHOICES = (50, 100, 200, 500, 1000)
DEFAULT_K = 200
VIEWS = ("grid", "table", "map", "taxa")
#: The map's basemaps: a bundled outline of the countries (offline) or tiles from the internet.
BASEMAPS = ("outline", "tiles")
TABS = ("search", "collection", "curation")
MODES = ("text", "like", "image")
#: The coordinates filter's choices, as the sidebar words them.
COORDS: dict[str, bool | None] = {"any": None, "with coordinates": True, "without coordinates": False}


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


@dataclass(frozen=True)
class FilterChip:
    """One selected value of a filter, as the page shows it (a button that removes it)."""

    param: str
    value: str | None
    text: str


@dataclass(frozen=True)
class QueryPart:
    """One part of what is searched, as the bar above the results shows it (each can be removed):
    ``kind`` is ``words``, ``photo`` or ``image`` (an indexed image; ``image_id`` says which)."""

    kind: str
    text: str
    image_id: int | None = None


_PHOTO_KEY = re.compile(r"^[0-9a-f]{16,64}$")


@dataclass(frozen=True)
class BrowseState:
    """Everything that decides what the search page shows.

    ``mode``: ``text`` (``q``), ``like`` (images similar to the indexed images ``like``: one, or
    the mean of several) or ``image`` (an uploaded photo, kept in the collection's cache under the
    content key ``photo``, so that the URL reopens it). Only the words of a text search are kept:
    a photo or "more like this" replaces them. ``values`` maps each multi-valued filter
    parameter (see :data:`FILTERS`) to its selected values; ``year`` is an inclusive range (either
    end may be None); ``coords`` True/False keeps only images with/without coordinates.
    ``selection``: the results the user ticked (to export, search like them, curate); ``detail``:
    the image the detail view shows; ``basemap``: the map's background.
    """

    q: str = ""
    mode: str = "text"
    like: tuple[int, ...] = ()
    photo: str | None = None
    values: tuple[tuple[str, tuple[str, ...]], ...] = ()
    year: tuple[int | None, int | None] | None = None
    coords: bool | None = None
    k: int = DEFAULT_K
    page: int = 1
    view: str = "grid"
    detail: int | None = None
    tab: str = "search"
    collection: str | None = None
    selection: tuple[int, ...] = ()
    basemap: str = "outline"

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
        if self.mode == "like" and self.like:
            return f"images like {_images_text(self.like)}"
        return f"text: {self.q}" if self.q.strip() else "no query (browsing)"

    def query_parts(self, photo_name: str | None = None) -> list[QueryPart]:
        """What is searched besides the filters: the words, the photo, or the indexed images (one
        part each, in that order); none when browsing."""
        if self.mode == "image":
            return [QueryPart("photo", f"photo {photo_name}" if photo_name else "your photo")]
        if self.mode == "like" and self.like:
            return [QueryPart("image", f"image {i}", i) for i in self.like]
        return [QueryPart("words", self.q.strip())] if self.q.strip() else []

    # -- URL -----------------------------------------------------------------------------

    def to_params(self) -> dict[str, list[str]]:
        """URL query parameters: ``q`` or ``like``, one parameter per filter (repeated for a set),
        ``photo`` (the key of an uploaded photo in the collection's cache), and the view, detail,
        selection and basemap when they are not the defaults."""
        out: dict[str, list[str]] = {}
        if self.mode == "text" and self.q.strip():
            out["q"] = [self.q]
        elif self.mode == "like" and self.like:
            out["like"] = [str(i) for i in self.like]
        elif self.mode == "image" and self.photo:
            out["photo"] = [self.photo]
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
        if self.selection:
            out["sel"] = [str(i) for i in self.selection]
        if self.basemap != "outline":
            out["basemap"] = [self.basemap]
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

        def ids(name: str) -> tuple[int, ...]:
            out: list[int] = []
            for raw in values(name):
                try:
                    n = int(raw.strip())
                except ValueError:
                    notices.append(f"ignored {name}={raw!r}: not a whole number")
                    continue
                if n < 0:
                    notices.append(f"ignored {name}={raw!r}: must be at least 0")
                    continue
                out.append(n)
            return tuple(dict.fromkeys(out))

        state = cls()
        q = last("q") or ""
        like = ids("like")
        photo = last("photo")
        if like:
            state = replace(state, mode="like", like=like)
        elif photo:
            if _PHOTO_KEY.match(photo.strip().lower()):
                state = replace(state, mode="image", photo=photo.strip().lower())
            else:
                notices.append(f"ignored photo={photo!r}: not the key of a photo")
                state = replace(state, q=q)
        else:
            state = replace(state, q=q)
        if q and state.mode != "text":
            notices.append(f"ignored q={q!r}: a link searches by words or by an image, not both")
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
            "basemap": choice("basemap", BASEMAPS),
            "selection": ids("sel") or None,
        }
        return replace(state, **{name: v for name, v in given.items() if v is not None}), notices

    # -- transitions the page's widgets and buttons make ---------------------------------------

    def search_text(self, q: str | None) -> BrowseState:
        return replace(self, q=q or "", mode="text", like=(), photo=None, page=1, detail=None, tab="search")

    def more_like(self, image_id: int) -> BrowseState:
        """Images like one indexed image (the words of a text search go: they would be ignored)."""
        return self.more_like_these([image_id])

    def more_like_these(self, image_ids: Iterable[int]) -> BrowseState:
        """Images like several indexed images at once (the mean of their vectors)."""
        like = tuple(dict.fromkeys(int(i) for i in image_ids))
        if not like:
            return self
        return replace(self, q="", mode="like", like=like, photo=None, page=1, detail=None, tab="search")

    def with_photo(self, key: str) -> BrowseState:
        """Search by the uploaded photo kept under ``key`` (the words go)."""
        return replace(self, q="", mode="image", like=(), photo=key, page=1, detail=None, tab="search")

    def without_query(self) -> BrowseState:
        """Nothing searched: every image passing the filters (the filters stay)."""
        return replace(self, q="", mode="text", like=(), photo=None, page=1, detail=None)

    def without_part(self, kind: str, image_id: int | None = None) -> BrowseState:
        """One part of the query (:meth:`query_parts`) removed: the words, the photo, or one of the
        indexed images (the others stay)."""
        if kind == "image" and image_id is not None and len(self.like) > 1:
            return replace(self, like=tuple(i for i in self.like if i != image_id), page=1, detail=None)
        return self.without_query()

    def with_detail(self, image_id: int, page: int | None = None) -> BrowseState:
        """The detail view of ``image_id``; ``page``: the page of the results it is on (so Back to
        the results lands there)."""
        return replace(self, detail=int(image_id), tab="search", page=self.page if page is None else max(1, int(page)))

    def with_selected(self, image_id: int, on: bool) -> BrowseState:
        ids = [i for i in self.selection if i != int(image_id)]
        if on:
            ids.append(int(image_id))
        return replace(self, selection=tuple(ids))

    def without_selection(self) -> BrowseState:
        return replace(self, selection=())

    def with_basemap(self, basemap: str) -> BrowseState:
        return replace(self, basemap=basemap if basemap in BASEMAPS else "outline")

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
        """This state less what only decides how results are shown (page, view, detail, tab,
        selection, basemap): equal keys run the same search, so a page caches its result under it."""
        return replace(self, page=1, view="grid", detail=None, tab="search", selection=(), basemap="outline")

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


def _year_text(year: tuple[int | None, int | None]) -> str:
    lo, hi = year
    return f"year: {lo if lo is not None else '…'}–{hi if hi is not None else '…'}"


def _images_text(ids: Sequence[int]) -> str:
    if len(ids) == 1:
        return f"image {ids[0]}"
    return "images " + ", ".join(str(i) for i in ids[:-1]) + f" and {ids[-1]}"


def _coords_text(coords: bool) -> str:
    return "with coordinates" if coords else "without coordinates"
