"""What the search app decides, without Streamlit: state <-> URL, searching, facets, export, taxa.

The app (``search_ui/app.py``) only draws widgets; every decision about what to search and what to
show is made here and tested without a browser:

- :class:`BrowseState`: the query (text, "more like this" id, or an uploaded picture), the
  filters, and the view, with a lossless round trip to URL query parameters (``?q=TEXT`` plus one
  parameter per filter; a repeated parameter is a set of values).
- :func:`run_search`: one search (or, with no query, a listing of the images passing the filters).
- :func:`result_facets`, :func:`taxa_counts`, :func:`map_points`, :class:`FacetCatalog`: counts for
  the sidebar, the chart and the map.
- :func:`export_csv`: the current results as CSV, headed by the query and filters that made them.
- :func:`read_upload`: checks an uploaded file (size, kind) before anything decodes it for real.
- :class:`TaxaPredictor`: the most likely of the collection's own taxa for a picture, at a rank,
  with label embeddings cached per collection generation and rank.
- :func:`collection_overview`: what the collection page shows.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, urlencode

from indexer.errors import QueryError
from indexer.locations import file_name
from indexer.search.filters import Condition, Filter
from indexer.store.schema import RANK_COLUMNS, RANKS

__all__ = [
    "AppArgs",
    "parse_app_args",
    "FilterSpec",
    "FILTERS",
    "FACET_FIELDS",
    "BrowseState",
    "UploadError",
    "read_upload",
    "run_search",
    "suggest_taxa",
    "describe_taxon",
    "hit_rank",
    "hit_taxon_name",
    "hit_date",
    "card_fields",
    "split_name",
    "filter_label",
    "key_facts",
    "result_facets",
    "facet_counts",
    "taxa_counts",
    "map_points",
    "result_rows",
    "detail_fields",
    "source_record_url",
    "export_csv",
    "EXPORT_COLUMNS",
    "FacetCatalog",
    "TaxaPredictor",
    "TaxonScore",
    "collection_overview",
    "page_bounds",
    "listing_page",
    "configure_threads",
]

log = logging.getLogger(__name__)

#: Results fetched per search (facets, map, chart and export describe these); choices in the app.
K_CHOICES = (50, 100, 200, 500, 1000)
DEFAULT_K = 200
PAGE_SIZE = 24
VIEWS = ("grid", "table", "map", "taxa")
TABS = ("search", "collection")
MODES = ("text", "like", "image")

#: Upload limit (bytes) and the image kinds accepted, by what the bytes are, not by the name.
MAX_UPLOAD_BYTES = int(float(os.environ.get("BIOCLIP_SEARCH_MAX_UPLOAD_MB", "20")) * 1024 * 1024)
#: Largest upload in pixels (width x height, from the header): a small file must not decode into
#: gigabytes (60 MP is about 180 MB of RGB while it is read).
MAX_UPLOAD_PIXELS = 60_000_000
UPLOAD_TYPES = ("jpg", "jpeg", "png", "tif", "tiff", "webp")
_UPLOAD_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "TIFF": "TIFF", "WEBP": "WebP"}


# ---------------------------------------------------------------------------------------------
# the app's arguments


@dataclass(frozen=True)
class AppArgs:
    collections: tuple[str, ...]
    device: str = "auto"


def parse_app_args(argv: Sequence[str], environ: Mapping[str, str]) -> AppArgs:
    """Collections and device for the app.

    ``BIOCLIP_SEARCH_COLLECTIONS`` (``os.pathsep``-separated) and ``BIOCLIP_SEARCH_DEVICE``, when
    set, win over the script's arguments (``COLLECTION... --device D``, as ``bioclip-app`` passes
    them after ``--``); a test runner's own arguments then never pass for collections.
    """
    positional: list[str] = []
    device = None
    it = iter(argv)
    for arg in it:
        if arg == "--device":
            device = next(it, None)
        elif arg.startswith("--device="):
            device = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            continue
        else:
            positional.append(arg)
    if "BIOCLIP_SEARCH_COLLECTIONS" in environ:
        collections = [p for p in environ["BIOCLIP_SEARCH_COLLECTIONS"].split(os.pathsep) if p.strip()]
    else:
        collections = positional
    device = environ.get("BIOCLIP_SEARCH_DEVICE") or device or "auto"
    return AppArgs(tuple(collections), device)


def collection_labels(paths: Sequence[str]) -> dict[str, str]:
    """Short, unique names for a collection picker: the folder name, or the path when two clash."""
    names = {p: os.path.basename(os.path.normpath(p)) or p for p in paths}
    clash = {n for n, c in Counter(names.values()).items() if c > 1}
    return {p: (p if n in clash else n) for p, n in names.items()}


def configure_threads(n: int | None = None) -> int:
    """Cap FAISS's OpenMP threads (and torch's, once imported) so that concurrent sessions share
    the cores instead of oversubscribing them. ``BIOCLIP_SEARCH_THREADS`` overrides the default
    (half the cores, at most 4, at least 1). Returns the cap."""
    import sys

    if n is None:
        env = os.environ.get("BIOCLIP_SEARCH_THREADS")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n = int(env) if env and env.isdigit() and int(env) > 0 else max(1, min(4, cores // 2))
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:  # pragma: no cover - faiss is a dependency
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            torch.set_num_threads(n)
        except RuntimeError:  # pragma: no cover - set after parallel work began: harmless
            pass
    return n


# ---------------------------------------------------------------------------------------------
# filters and the state of a search


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
        parts = []
        for param, vals in self.values:
            parts.append(f"{_FILTER_BY_PARAM[param].label.lower()}: {' or '.join(vals)}")
        if self.year is not None:
            lo, hi = self.year
            parts.append(f"year: {lo if lo is not None else '…'}–{hi if hi is not None else '…'}")
        if self.coords is not None:
            parts.append("with coordinates" if self.coords else "without coordinates")
        return "; ".join(parts)

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
        if k is not None:  # the nearest choice the page offers at or above it
            state = replace(state, k=next((c for c in sorted(K_CHOICES) if c >= k), max(K_CHOICES)))
        page = integer("page", 1)
        if page is not None:
            state = replace(state, page=page)
        view = choice("view", VIEWS)
        if view:
            state = replace(state, view=view)
        detail = integer("detail", 0)
        if detail is not None:
            state = replace(state, detail=detail)
        tab = choice("tab", TABS)
        if tab:
            state = replace(state, tab=tab)
        coll = last("collection")
        if coll:
            state = replace(state, collection=coll)
        return state, notices

    # -- transitions the page's buttons make ---------------------------------------------

    def search_text(self, q: str) -> BrowseState:
        return replace(self, q=q, mode="text", like=None, page=1, detail=None, tab="search")

    def more_like(self, image_id: int) -> BrowseState:
        return replace(self, mode="like", like=int(image_id), page=1, detail=None, tab="search")

    def with_upload(self) -> BrowseState:
        return replace(self, mode="image", like=None, page=1, detail=None, tab="search")


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


# ---------------------------------------------------------------------------------------------
# uploads


class UploadError(QueryError):
    """An uploaded file is too large, empty, or not an image of an accepted kind."""


def read_upload(name: str | None, data: bytes, max_bytes: int | None = None) -> bytes:
    """Check an upload and return its bytes; raise UploadError with a message for the user.

    Accepted: JPEG, PNG, TIFF and WebP, recognised by their content (the name may lie). The
    bytes stay in memory; nothing is written to disk.
    """
    label = name or "the file"
    max_bytes = MAX_UPLOAD_BYTES if max_bytes is None else max_bytes
    size = len(data)
    if size == 0:
        raise UploadError(f"{label} is empty")
    if size > max_bytes:
        raise UploadError(f"{label} is {_mb(size)}; pictures up to {_mb(max_bytes)} can be searched")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            kind = im.format
            width, height = im.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        raise UploadError(f"{label} is not a picture: upload a JPEG, PNG, TIFF or WebP image") from None
    if kind not in _UPLOAD_FORMATS:
        raise UploadError(f"{label} is a {kind} image; upload a JPEG, PNG, TIFF or WebP image")
    if width * height > MAX_UPLOAD_PIXELS:
        raise UploadError(
            f"{label} has {width} x {height} pixels; pictures up to {MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels can be searched"
        )
    from indexer.errors import DecodeError
    from indexer.media.decode import decode_image

    try:
        decode_image(data, min_size=(224, 224), name=label, max_pixels=MAX_UPLOAD_PIXELS)
    except DecodeError as exc:
        reason = {"truncated": "it is cut short", "too-many-pixels": "it has too many pixels"}.get(
            exc.reason, exc.reason
        )
        raise UploadError(f"{label} cannot be read as a picture ({reason})") from None
    return data


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


# ---------------------------------------------------------------------------------------------
# searching


def listing_page(engine, state: BrowseState, result) -> tuple[list, int, int, int, int, int]:
    """The page of a result to show: ``(hits, start, end, page, pages, total)``.

    A similarity search shows pages of its ``k`` hits. A listing (no query: every image passing
    the filters) pages through all of those images, not only the first ``k`` fetched for the
    facets, map, chart and export: pages past them are read from the collection as they are shown.
    """
    hits = list(result.hits)
    listing = state.mode == "text" and not state.q.strip()
    total = int(result.candidates) if listing and result.candidates is not None else len(hits)
    start, end, page, pages = page_bounds(total, state.page)
    if end <= len(hits):
        return hits[start:end], start, end, page, pages, total
    shown = engine.browse(state.to_filter() or None, k=end - start, offset=start).hits
    return shown, start, start + len(shown), page, pages, total


def run_search(engine, state: BrowseState, *, image_vector=None, image_name: str | None = None):
    """Answer ``state``'s query with its filters; returns an engine ``SearchResult``.

    With mode ``image`` pass the uploaded picture's embedding as ``image_vector``. Raises
    QueryError / FilterError with a message for the user.
    """
    filters = state.to_filter()
    k = max(1, int(state.k))
    if state.mode == "image":
        if image_vector is None:
            raise QueryError("upload a picture to search by image")
        result = engine.search(vector=image_vector, k=k, filters=filters or None)
        what = (
            f"images similar to the uploaded picture {image_name}"
            if image_name
            else "images similar to the uploaded picture"
        )
        if filters:
            what += f", where {filters.describe()}"
        result.interpretation = what
        return result
    if state.mode == "like" and state.like is not None:
        return engine.similar(int(state.like), k=k, filters=filters or None)
    if state.q.strip():
        return engine.search(state.q, k=k, filters=filters or None)
    return engine.browse(filters or None, k=k)


def suggest_taxa(engine, text: str, limit: int = 8):
    """Taxa of the collection whose names start with (a word of) ``text``, most images first;
    none when ``text`` already names a taxon exactly."""
    if not text or not text.strip():
        return []
    taxonomy = engine.taxonomy
    if taxonomy.resolve(text):
        return []
    return taxonomy.suggest(text, limit=limit)


def describe_taxon(match) -> str:
    """``Corvus corax (common raven) · species · 12 images``."""
    name = match.name
    if match.common_name:
        name += f" ({match.common_name})"
    n = match.count
    return f"{name} · {match.rank} · {n} image{'s' if n != 1 else ''}"


# ---------------------------------------------------------------------------------------------
# what a hit shows


def split_name(name: str) -> tuple[str, str]:
    """``("Felis catus", "Linnaeus, 1758")`` from ``"Felis catus Linnaeus, 1758"``: the name (shown
    in italics) and its authorship (not). The name is the first word and the lower-case words
    after it (epithets, ``subsp.``); the authorship starts at the first word that is capitalised,
    parenthesised or a number."""
    words = str(name).split()
    if not words:
        return "", ""
    cut = 1
    while cut < len(words) and words[cut][:1].islower():
        cut += 1
    return " ".join(words[:cut]), " ".join(words[cut:])


def filter_label(param: str) -> str:
    """The sidebar's label of a filter parameter (``institutionCode`` -> ``Institution``)."""
    spec = _FILTER_BY_PARAM.get(param)
    return spec.label if spec is not None else param


def key_facts(hit) -> list[str]:
    """The lines a curator reads first about a specimen: catalogue number, institution and
    collection, basis of record and type status; date and collector; place; coordinates."""
    m = hit.metadata

    def join(*vals, sep=" · "):
        return sep.join(str(v) for v in vals if v is not None and str(v).strip() != "")

    place = join(m.get("locality"), m.get("stateProvince"), m.get("country") or m.get("countryCode"), sep=", ")
    coords = ""
    lat, lon = m.get("decimalLatitude"), m.get("decimalLongitude")
    if lat is not None and lon is not None and str(lat) != "" and str(lon) != "":
        coords = f"{lat}, {lon}"
    lines = [
        join(
            m.get("catalogNumber"),
            join(m.get("institutionCode"), m.get("collectionCode"), sep=" "),
            m.get("basisOfRecord"),
            m.get("typeStatus"),
        ),
        join(
            hit_date(hit),
            f"recorded by {m['recordedBy']}" if m.get("recordedBy") else None,
            f"identified by {m['identifiedBy']}" if m.get("identifiedBy") else None,
        ),
        place,
        coords,
    ]
    return [line for line in lines if line]


def hit_rank(hit) -> str | None:
    """The rank the record is identified to: ``taxonRank`` when given, else the lowest rank
    present in its lineage."""
    meta = hit.metadata
    declared = meta.get("taxonRank")
    if declared:
        return str(declared).lower()
    if hit_taxon_name(hit, "species"):
        return "species"
    for rank, col in zip(reversed(RANKS[:-1]), reversed(RANK_COLUMNS[:-1])):
        if meta.get(col):
            return rank
    return None


def hit_taxon_name(hit, rank: str) -> str | None:
    """The record's taxon at ``rank`` (a binomial for species), or None."""
    meta = hit.metadata
    if rank == "species":
        genus, epithet = meta.get("genus"), meta.get("specificEpithet")
        if genus and epithet:
            return f"{genus} {epithet}"
        sci = (meta.get("scientificName") or "").split()
        if len(sci) >= 2 and sci[0][:1].isupper() and sci[1][:1].islower() and (not genus or genus == sci[0]):
            return f"{sci[0]} {sci[1]}"
        return None
    value = meta.get(RANK_COLUMNS[RANKS.index(rank)])
    if value:
        return str(value)
    if rank == "genus":
        sci = (meta.get("scientificName") or "").split()
        if sci and sci[0][:1].isupper():
            return sci[0]
    return None


def hit_date(hit) -> str | None:
    meta = hit.metadata
    if meta.get("eventDate"):
        return str(meta["eventDate"])
    if meta.get("year") is not None:
        return str(meta["year"])
    return None


def card_fields(hit, *, scored: bool = True) -> dict[str, Any]:
    """What a result card shows: name (italic in the page), rank, catalog number, institution,
    date, score (None when the result is a listing, not a similarity search)."""
    return {
        "id": hit.id,
        "name": hit.scientific_name or hit.metadata.get("vernacularName") or "(unnamed)",
        "named": bool(hit.scientific_name),
        "vernacular": hit.metadata.get("vernacularName"),
        "rank": hit_rank(hit),
        "catalogNumber": hit.metadata.get("catalogNumber"),
        "institution": hit.metadata.get("institutionCode"),
        "date": hit_date(hit),
        "score": float(hit.score) if scored else None,
        "file": file_name(hit.metadata.get("mediaURL") or hit.location),
    }


def result_facets(hits: Sequence, params: Iterable[str] | None = None) -> dict[str, Counter]:
    """Value counts among ``hits`` for each filter parameter (ranks and facet fields)."""
    wanted = list(params) if params is not None else [f.param for f in FILTERS if f.kind == "multi"]
    out: dict[str, Counter] = {p: Counter() for p in wanted}
    for hit in hits:
        for p in wanted:
            if p in RANKS:
                v = hit_taxon_name(hit, p)
            else:
                v = hit.metadata.get(_FILTER_BY_PARAM[p].field)
            if v is not None and str(v) != "":
                out[p][str(v)] += 1
    return out


def facet_counts(engine, state: BrowseState, hits: Sequence, *, image_vector=None) -> dict[str, Counter]:
    """The counts beside the sidebar's values. For a filter with nothing selected: how many of
    the current results have each value. For a filter in use: how many of the results the same
    search gives without that filter (so each other value says what selecting it too would
    add, as on collection portals). Costs one more search per filter in use."""
    counts = result_facets(hits)
    for param, _ in state.values:
        try:
            other = run_search(engine, state.with_values(param, []), image_vector=image_vector)
        except QueryError:
            continue
        counts[param] = result_facets(other.hits, [param])[param]
    return counts


def taxa_counts(hits: Sequence, rank: str) -> list[tuple[str, int]]:
    """How many of ``hits`` fall in each taxon at ``rank`` (most first; unknown last)."""
    counts = Counter(hit_taxon_name(h, rank) or "(not given)" for h in hits)
    return sorted(counts.items(), key=lambda kv: (kv[0] == "(not given)", -kv[1], kv[0]))


def map_points(hits: Sequence) -> list[dict[str, Any]]:
    """Hits with valid coordinates as ``{"lat", "lon", "id", "name"}`` rows."""
    out = []
    for h in hits:
        lat, lon = h.metadata.get("decimalLatitude"), h.metadata.get("decimalLongitude")
        try:
            lat, lon = float(lat), float(lon)
        except (TypeError, ValueError):
            continue
        if -90 <= lat <= 90 and -180 <= lon <= 180:
            out.append({"lat": lat, "lon": lon, "id": h.id, "name": h.scientific_name or ""})
    return out


def result_rows(hits: Sequence, media=None, *, scored: bool = True) -> list[dict[str, Any]]:
    """Rows of the table view."""
    rows = []
    for h in hits:
        c = card_fields(h, scored=scored)
        rows.append(
            {
                "id": h.id,
                "score": round(c["score"], 4) if c["score"] is not None else None,
                "scientificName": h.scientific_name,
                "rank": c["rank"],
                "catalogNumber": c["catalogNumber"],
                "institutionCode": c["institution"],
                "date": c["date"],
                "country": h.metadata.get("country"),
                "license": h.metadata.get("license"),
                "media": media.link(h) if media is not None else h.location,
            }
        )
    return rows


_DETAIL_ORDER = (
    "scientificName",
    "vernacularName",
    "taxonRank",
    *RANK_COLUMNS,
    "infraspecificEpithet",
    "typeStatus",
    "identifiedBy",
    "catalogNumber",
    "recordID",
    "occurrenceID",
    "institutionCode",
    "collectionCode",
    "basisOfRecord",
    "eventDate",
    "year",
    "recordedBy",
    "country",
    "countryCode",
    "stateProvince",
    "locality",
    "decimalLatitude",
    "decimalLongitude",
    "license",
    "rightsHolder",
    "references",
    "mediaURL",
    "mediaFormat",
    "id",
    "source",
    "location",
    "width",
    "height",
    "size",
    "sha256",
    "indexed_at",
)
_DETAIL_HIDDEN = {"meta_hash", "key", "mtime", "extra"}


def detail_fields(hit) -> list[tuple[str, str]]:
    """Every non-empty metadata field of a hit, in a reading order (taxon, specimen, event,
    rights, file), then the source's own extra fields."""
    meta = dict(hit.metadata)
    out: list[tuple[str, str]] = []
    seen = set()
    for name in _DETAIL_ORDER:
        seen.add(name)
        v = meta.get(name)
        if v is not None and str(v) != "":
            out.append((name, _text(v)))
    for name in sorted(meta):
        if name in seen or name in _DETAIL_HIDDEN:
            continue
        v = meta.get(name)
        if v is not None and str(v) != "":
            out.append((name, _text(v)))
    extra = meta.get("extra")
    if extra:
        try:
            obj = json.loads(extra) if isinstance(extra, str) else dict(extra)
        except (ValueError, TypeError):
            obj = {"extra": extra}
        if isinstance(obj, dict):
            for k in sorted(obj):
                if obj[k] is not None and str(obj[k]) != "":
                    out.append((str(k), _text(obj[k])))
    return out


def _text(v: Any) -> str:
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def source_record_url(hit) -> str | None:
    """A link to the source record: ``references``, else an ``occurrenceID`` that is an http(s)
    URL. Nothing else is ever linked (no ``javascript:`` or file URLs from metadata)."""
    for name in ("references", "occurrenceID"):
        v = hit.metadata.get(name)
        if isinstance(v, str) and v.strip().lower().startswith(("http://", "https://")):
            return v.strip()
    return None


def page_bounds(n: int, page: int, page_size: int | None = None) -> tuple[int, int, int, int]:
    """``(start, end, page, pages)`` for showing ``n`` results ``page_size`` at a time; ``page``
    is clamped into range."""
    page_size = page_size or PAGE_SIZE
    pages = max(1, -(-n // page_size))
    page = min(max(1, int(page)), pages)
    start = (page - 1) * page_size
    return start, min(n, start + page_size), page, pages


# ---------------------------------------------------------------------------------------------
# export

#: Columns of the CSV export, in order.
EXPORT_COLUMNS = ("id", "score", "occurrenceID", "catalogNumber", "scientificName", "media", "license")


def export_csv(
    hits: Sequence,
    state: BrowseState,
    *,
    media=None,
    collection: str | None = None,
    interpretation: str | None = None,
    image_name: str | None = None,
    now: _dt.datetime | None = None,
) -> bytes:
    """The results as UTF-8 CSV. It starts with ``#`` comment lines that record the collection,
    the query, how it was understood, the filters and the URL parameters that reopen the search
    (``pandas.read_csv(..., comment="#")`` skips them), then a header row of
    :data:`EXPORT_COLUMNS`. A cell that a spreadsheet would run as a formula is quoted with ``'``."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    buf = io.StringIO()
    lines = [
        "bioclip-search export",
        f"collection: {collection}" if collection else None,
        f"query: {state.describe_query(image_name)}",
        f"understood as: {interpretation}" if interpretation else None,
        f"filters: {state.describe_filters() or 'none'}",
        f"url: ?{state.query_string()}",
        f"results: {len(hits)}",
        f"exported: {now.isoformat(timespec='seconds')}",
    ]
    for line in lines:
        if line is not None:
            buf.write("# " + " ".join(line.split()) + "\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(EXPORT_COLUMNS)
    scored = state.mode != "text" or bool(state.q.strip())
    for h in hits:
        meta = h.metadata
        w.writerow(
            [
                h.id,
                f"{float(h.score):.6f}" if scored else "",
                _cell(meta.get("occurrenceID")),
                _cell(meta.get("catalogNumber")),
                _cell(h.scientific_name),
                _cell(media.link(h) if media is not None else h.location),
                _cell(meta.get("license")),
            ]
        )
    return buf.getvalue().encode("utf-8")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    s = str(v)
    if s[:1] in ("=", "+", "@", "\t", "\r") or (s[:1] == "-" and not _is_number(s)):
        return "'" + s
    return s


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# sidebar options over the whole collection


class FacetCatalog:
    """The values each filter offers (over the whole collection, with counts), computed once per
    collection generation. Thread-safe."""

    def __init__(self, engine, *, limit: int = 200, taxa_limit: int = 500):
        self.engine = engine
        self.limit = limit
        self.taxa_limit = taxa_limit
        self._lock = threading.Lock()
        self._generation = None
        self._cache: dict[str, Any] = {}

    def _get(self, key: str, make):
        gen = self.engine.generation
        with self._lock:
            if gen != self._generation:
                self._cache.clear()
                self._generation = gen
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    def options(self, param: str) -> list[tuple[str, int]]:
        """``(value, images)`` for a filter parameter, most images first."""
        if param in RANKS:
            return self._get(
                "rank:" + param,
                lambda: [(m.name, m.count) for m in self.engine.taxonomy.taxa(param)[: self.taxa_limit]],
            )
        spec = _FILTER_BY_PARAM[param]
        return self._get(param, lambda: [(str(v), int(c)) for v, c in self.engine.facet(spec.field, None, self.limit)])

    def ranks(self) -> list[str]:
        """Ranks at which the collection has named taxa."""
        return self._get("ranks", lambda: [r for r in RANKS if self.engine.taxonomy.taxa(r)])

    def year_range(self) -> tuple[int, int] | None:
        return self._get("year", lambda: self.engine.value_range("year"))

    def has_coordinates(self) -> int:
        return self._get(
            "coords",
            lambda: int(self.engine.count(Filter.of(Condition("has_coordinates", "=", True)))),
        )


# ---------------------------------------------------------------------------------------------
# most likely taxa for a picture


@dataclass(frozen=True)
class TaxonScore:
    name: str
    rank: str
    score: float
    images: int
    common_name: str | None = None


class TaxaPredictor:
    """Zero-shot scores of a picture against the collection's own taxa at a chosen rank.

    Labels are the collection's taxa at that rank (the ``max_labels`` with most images), embedded
    as BioCLIP's taxonomic + common-name text; with at most ``ensemble_max`` labels through OpenAI's
    80 templates (as pybioclip), else as one caption each (80 times cheaper). The label embeddings
    are computed once per collection generation and rank, and shared by every session.
    """

    def __init__(self, engine, *, max_labels: int = 2000, ensemble_max: int = 64):
        self.engine = engine
        self.max_labels = max_labels
        self.ensemble_max = ensemble_max
        self._lock = threading.Lock()
        self._cache: dict[tuple[int, str], tuple[Any, list]] = {}
        self.builds = 0  # classifiers built (for tests)

    def _classifier(self, rank: str):
        from bioclip.zeroshot import ZeroShotClassifier

        key = (self.engine.generation, rank)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
            matches, labels = [], []
            for m in self.engine.taxonomy.taxa(rank):
                try:
                    labels.append(m.taxon())
                except ValueError:  # a lineage bioclip cannot write (e.g. an epithet without genus)
                    continue
                matches.append(m)
                if len(labels) >= self.max_labels:
                    break
            if not labels:
                raise QueryError(f"this collection names no taxa at rank {rank}")
            clf = ZeroShotClassifier(self.engine.model, labels, ensemble=len(labels) <= self.ensemble_max)
            self.builds += 1
            # Keep only the current generation's classifiers.
            self._cache = {k: v for k, v in self._cache.items() if k[0] == key[0]}
            self._cache[key] = (clf, matches)
            return clf, matches

    def predict(self, vector, rank: str, k: int = 5) -> list[TaxonScore]:
        """The ``k`` most likely taxa at ``rank`` for one image embedding (1, d) or (d,)."""
        import numpy as np

        if rank not in RANKS:
            raise QueryError(f"unknown rank {rank!r}; ranks are {', '.join(RANKS)}")
        clf, matches = self._classifier(rank)
        vec = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        probs = clf.probabilities(vec)[0]
        order = np.argsort(-probs, kind="stable")[: max(1, int(k))]
        return [
            TaxonScore(matches[i].name, rank, float(probs[i]), matches[i].count, matches[i].common_name) for i in order
        ]


# ---------------------------------------------------------------------------------------------
# the collection page


def collection_overview(engine) -> dict[str, Any]:
    """What the collection page shows, from ``engine.info()``: model and revision, counts, index
    type and measured recall, failures by reason, images and taxa per rank, sources."""
    info = engine.info()
    model = info.get("model_info") or {}
    index_info = info.get("index_info") or {}
    recall = _find_recall(index_info)
    pre = info.get("preprocess") or {}
    return {
        "path": info.get("path"),
        "model": info.get("model"),
        "model_source": model.get("source"),
        "revision": model.get("revision") or "not pinned (local or unversioned model)",
        "architecture": model.get("architecture"),
        "dimension": info.get("dimension"),
        "preprocess": ", ".join(f"{k} {v}" for k, v in pre.items() if k in ("mode", "size", "interpolation")),
        "images": info.get("images", 0),
        "failures": info.get("failures", 0),
        "retired": info.get("retired", 0),
        "unindexed": info.get("unindexed_images", 0),
        "generation": info.get("generation"),
        "created": info.get("created"),
        "updated": info.get("updated"),
        "index": info.get("index") or "none",
        "recall": recall,
        "recall_target": index_info.get("recall_target")
        if isinstance(index_info.get("recall_target"), (int, float))
        else None,
        "index_params": ", ".join(f"{k} {v}" for k, v in (index_info.get("params") or {}).items()),
        "index_info": index_info,
        "failures_by_reason": sorted((info.get("failures_by_reason") or {}).items(), key=lambda kv: -kv[1]),
        "ranks": [(r, v.get("images", 0), v.get("taxa", 0)) for r, v in (info.get("ranks") or {}).items()],
        "sources": sorted((info.get("sources") or {}).items(), key=lambda kv: -kv[1]),
        "last_build": info.get("last_build"),
    }


def _find_recall(index_info: Mapping[str, Any]) -> float | None:
    """The measured recall in an index entry's info, whatever the ANN module calls it (a key
    with "recall" in its name that is not the target, at any depth)."""
    nested = []
    for key, v in index_info.items():
        name = str(key).lower()
        if "recall" in name and "target" not in name and isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, Mapping):
            nested.append(v)
    for v in nested:
        found = _find_recall(v)
        if found is not None:
            return found
    return None
