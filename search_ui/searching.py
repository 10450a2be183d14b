"""One search of the page (or, with no query, a listing of every image passing the filters), its
pages, the counts beside the sidebar's values, the chart's and the map's data, taxon suggestions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from indexer.errors import QueryError
from indexer.store.schema import RANKS
from search_ui.hit_fields import hit_taxon_name
from search_ui.state import FILTERS, BrowseState, filter_spec

__all__ = [
    "PAGE_SIZE",
    "run_search",
    "listing_page",
    "page_bounds",
    "result_facets",
    "facet_counts",
    "taxa_counts",
    "map_points",
    "suggest_taxa",
    "describe_taxon",
    "result_summary",
    "corrections",
    "plural",
]

#: Results shown per page of the grid and the table.
PAGE_SIZE = 24


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
    if state.mode == "like" and len(state.like) == 1:
        return engine.similar(int(state.like[0]), k=k, filters=filters or None)
    if state.mode == "like" and state.like:
        # "more like these": the normalised sum of unit vectors points where their mean does
        from indexer.search.query import Query, Term

        query = Query.of(*(Term.id(int(i)) for i in state.like))
        return engine.search(query=query, k=k, filters=filters or None)
    if state.q.strip():
        return engine.search(state.q, k=k, filters=filters or None)
    return engine.browse(filters or None, k=k)


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


def page_bounds(n: int, page: int, page_size: int | None = None) -> tuple[int, int, int, int]:
    """``(start, end, page, pages)`` for showing ``n`` results ``page_size`` at a time; ``page``
    is clamped into range."""
    page_size = page_size or PAGE_SIZE
    pages = max(1, -(-n // page_size))
    page = min(max(1, int(page)), pages)
    start = (page - 1) * page_size
    return start, min(n, start + page_size), page, pages


def result_facets(hits: Sequence, params: Iterable[str] | None = None) -> dict[str, Counter]:
    """Value counts among ``hits`` for each filter parameter (ranks and facet fields)."""
    wanted = list(params) if params is not None else [f.param for f in FILTERS if f.kind == "multi"]
    out: dict[str, Counter] = {p: Counter() for p in wanted}
    for hit in hits:
        for p in wanted:
            if p in RANKS:
                v = hit_taxon_name(hit, p)
            else:
                v = hit.metadata.get(filter_spec(p).field)
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


def plural(n: int, word: str, plural_word: str | None = None) -> str:
    """``1 image``, ``2 images``, ``1,200 images`` (``plural_word`` for irregular plurals)."""
    return f"{n:,} {word if n == 1 else (plural_word or word + 's')}"


def corrections(engine, text: str, limit: int = 3) -> list:
    """Taxa of the collection close to ``text`` when it names none (a typo: "Salmo truta"), for
    the page to offer as "did you mean" buttons; none when ``text`` names a taxon or is empty."""
    from indexer.search.taxonomy import looks_like_scientific_name

    text = " ".join((text or "").split())
    if not text or engine.taxonomy.resolve(text) or not looks_like_scientific_name(text[:1].upper() + text[1:]):
        return []
    return engine.taxonomy.close_matches(text, limit)


def result_summary(state: BrowseState, result: Any, total: int) -> str:
    """The line above the results (Markdown): how many, how many pass the filters, how long."""
    n = len(result.hits)
    if state.scored:
        summary = f"**{n:,}** result{'s' if n != 1 else ''}"
        if result.candidates is not None and state.has_filters():
            summary += f" · {plural(result.candidates, 'image')} " + ("passes" if result.candidates == 1 else "pass")
            summary += " the filters"
        return summary + f" · {result.elapsed_ms:.0f} ms"
    passes = "passes" if total == 1 else "pass"
    summary = f"**{total:,}** image{'s' if total != 1 else ''}" + (
        f" {passes} the filters" if state.has_filters() else ""
    )
    if total > n:
        summary += f" · the map, chart, filter counts and export describe the first {n:,}"
    return summary
