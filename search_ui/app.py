"""The bioclip-search page (Streamlit). Thin: widgets and layout only.

Run with ``bioclip-app COLLECTION...`` (which calls ``streamlit run search_ui/app.py --
COLLECTION... --device D``), or set ``BIOCLIP_SEARCH_COLLECTIONS`` (``os.pathsep``-separated) and
``BIOCLIP_SEARCH_DEVICE``. Every decision lives in ``indexer.browse`` and ``indexer.media``.

State: one ``BrowseState`` per session (``st.session_state["_state"]``) is the truth; widgets
mirror it and their callbacks replace it; the page URL is written from it on every run, and read
into it when a session starts, so a shared URL runs the same search.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import sys
import threading
from dataclasses import replace

import streamlit as st

from bioclip.errors import BioclipError
from indexer import browse
from indexer.browse import BrowseState
from indexer.errors import IndexerError
from indexer.media.library import MediaLibrary
from search_ui import ui

log = logging.getLogger("search_ui")

st.set_page_config(page_title="bioclip-search", page_icon=":mag:", layout="wide")
# Never show a stack trace to a visitor (also set in search_ui/.streamlit/config.toml).
st.set_option("client.showErrorDetails", "none")

ss = st.session_state
_COORDS = {"any": None, "with coordinates": True, "without coordinates": False}
_VIEW_LABELS = {"grid": "Grid", "table": "Table", "map": "Map", "taxa": "Taxa chart"}


# -- shared, per-process objects (one per collection and device) ----------------------------


@st.cache_resource(show_spinner="Opening the collection…")
def open_engine(path: str, device: str):
    from indexer.search.engine import SearchEngine

    browse.configure_threads()
    engine = SearchEngine.open(path, device=device)
    # Load the model now, in the background, so that the first text or photo query does not wait
    # for it (the engine's own lock makes a query that comes first wait for this load, not repeat it).
    threading.Thread(target=_preload_model, args=(engine,), name="bioclip-model-preload", daemon=True).start()
    return engine


def _preload_model(engine) -> None:
    try:
        _ = engine.model  # loads it
        browse.configure_threads()  # torch is imported now: cap its threads too
    except Exception as exc:  # reported to the user by the first query that needs the model
        log.warning("cannot load the model of %s: %s", engine.collection.path, exc)


@st.cache_resource(show_spinner=False)
def media_library(path: str, device: str) -> MediaLibrary:
    return MediaLibrary.for_engine(open_engine(path, device))


@st.cache_resource(show_spinner=False)
def facet_catalog(path: str, device: str) -> browse.FacetCatalog:
    return browse.FacetCatalog(open_engine(path, device))


@st.cache_resource(show_spinner=False)
def taxa_predictor(path: str, device: str) -> browse.TaxaPredictor:
    return browse.TaxaPredictor(open_engine(path, device))


# -- state and callbacks -----------------------------------------------------------------------


def state() -> BrowseState:
    return ss["_state"]


def set_state(new: BrowseState) -> None:
    ss["_state"] = new


def sync_widgets(s: BrowseState) -> None:
    """Make the widgets show ``s`` (called where the state changed other than by the widget)."""
    ss["w_q"] = s.q
    for spec in browse.FILTERS:
        if spec.kind == "multi":
            ss[f"w_f_{spec.param}"] = list(s.selected(spec.param))
    ss["w_coords"] = next(k for k, v in _COORDS.items() if v == s.coords)
    ss.pop("w_year", None)  # re-seeded from the state with the collection's range
    ss["w_k"] = s.k
    ss["w_view"] = s.view
    ss["w_tab"] = s.tab


def seed(key: str, value) -> None:
    if key not in ss:
        ss[key] = value


def on_query() -> None:
    set_state(state().search_text(ss.get("w_q") or ""))


def on_pick_taxon(name: str) -> None:
    set_state(state().search_text(name))
    ss["w_q"] = name


def on_upload() -> None:
    if ss.get("w_upload") is not None:
        set_state(state().with_upload())
    else:
        set_state(replace(state(), mode="text", page=1))


def on_like(image_id: int) -> None:
    set_state(state().more_like(image_id))


def on_detail(image_id: int) -> None:
    set_state(replace(state(), detail=int(image_id), tab="search"))


def on_back() -> None:
    set_state(replace(state(), detail=None))


def on_filter(param: str) -> None:
    set_state(state().with_values(param, ss.get(f"w_f_{param}") or []))


def on_remove_filter(param: str, value: str | None) -> None:
    s = state()
    if param == "year":
        s = replace(s, year=None, page=1)
    elif param == "has_coordinates":
        s = replace(s, coords=None, page=1)
    else:
        s = s.with_values(param, [v for v in s.selected(param) if v != value])
    set_state(s)
    sync_widgets(s)


def on_clear_filters() -> None:
    s = replace(state(), values=(), year=None, coords=None, page=1)
    set_state(s)
    sync_widgets(s)


def on_year(full: tuple[int, int]) -> None:
    lo, hi = ss["w_year"]
    set_state(replace(state(), year=None if (lo, hi) == tuple(full) else (int(lo), int(hi)), page=1))


def on_coords() -> None:
    set_state(replace(state(), coords=_COORDS[ss["w_coords"]], page=1))


def on_k() -> None:
    set_state(replace(state(), k=int(ss["w_k"]), page=1))


def on_view() -> None:
    set_state(replace(state(), view=ss["w_view"]))


def on_tab() -> None:
    set_state(replace(state(), tab=ss["w_tab"], detail=None))


def on_page(page: int) -> None:
    set_state(replace(state(), page=max(1, page)))


def on_collection(paths: list[str], labels: dict[str, str]) -> None:
    label = ss["w_collection"]
    # The words of a text search go along (to compare collections); filters and ids do not.
    before = state()
    fresh = BrowseState(
        q=before.q if before.mode == "text" else "", collection=label if label != labels[paths[0]] else None
    )
    set_state(fresh)
    ss.pop("_upload", None)
    ss.pop("_result", None)
    sync_widgets(fresh)


# -- the page ----------------------------------------------------------------------------------


def main() -> None:
    args = browse.parse_app_args(sys.argv[1:], os.environ)
    if not args.collections:
        st.error("No collection to search. Start the app with: bioclip-app COLLECTION")
        return
    params = url_params()
    if "_state" not in ss or params != ss.get("_url"):
        # A new session, or the address changed outside the page (the browser's Back and Forward
        # buttons, an edited or pasted link): the URL is the truth.
        first, notices = BrowseState.from_params(params)
        set_state(first)
        sync_widgets(first)
        ss["_url"] = params
        ss["_url_notices"] = notices
    for note in ss.pop("_url_notices", []):
        st.warning(f"The link had a problem: {note}")

    paths = list(args.collections)
    labels = browse.collection_labels(paths)
    by_label = {v: k for k, v in labels.items()}
    s = state()
    if s.collection and s.collection not in by_label:
        st.warning(f"No collection named {s.collection!r} here; showing {labels[paths[0]]}.")
        s = replace(s, collection=None)
        set_state(s)
    path = by_label[s.collection] if s.collection else paths[0]

    with st.sidebar:
        st.title("bioclip-search")
        if len(paths) > 1:
            seed("w_collection", labels[path])
            st.selectbox(
                "Collection",
                [labels[p] for p in paths],
                key="w_collection",
                on_change=on_collection,
                args=(paths, labels),
            )
        seed("w_tab", s.tab)
        st.radio("Page", browse.TABS, key="w_tab", on_change=on_tab, format_func=str.capitalize, horizontal=True)

    try:
        engine = open_engine(path, args.device)
    except (IndexerError, BioclipError) as exc:
        st.error(f"Cannot open the collection {path}: {exc}")
        return
    lib = media_library(path, args.device)
    catalog = facet_catalog(path, args.device)
    s = state()
    if s.tab == "collection":
        ui.collection_page(engine)
        write_url(s)
        return
    search_page(engine, lib, catalog, taxa_predictor(path, args.device), args.device)


def search_page(engine, lib, catalog, predictor, device: str) -> None:
    s = state()
    top_q, top_up = st.columns([3, 2])
    with top_q:
        seed("w_q", s.q)
        st.text_input(
            "Search",
            key="w_q",
            on_change=on_query,
            placeholder="A taxon at any rank (Corvidae, Corvus corax, common raven) or any words",
            help="A name the collection knows is searched as that taxon; anything else as free text.",
        )
        suggestions(engine, s)
    with top_up:
        st.file_uploader(
            "…or search with a photo",
            type=list(browse.UPLOAD_TYPES),
            key="w_upload",
            on_change=on_upload,
            help=f"JPEG, PNG, TIFF or WebP, up to {browse.MAX_UPLOAD_BYTES // (1024 * 1024)} MB. It stays in memory.",
        )

    image_vec, image_name = None, None
    if s.mode != "image" and ss.get("w_upload") is not None:
        with top_up:
            st.button("Search with this photo again", key="upload_again", on_click=on_upload)
    if s.mode == "image":
        upload = ss.get("w_upload")
        if upload is None:
            s = replace(s, mode="text")
            set_state(s)
        else:
            try:
                image_vec, image_name, data = upload_vector(engine, upload)
            except (IndexerError, BioclipError) as exc:  # UploadError, or the model cannot read it
                st.error(str(exc))
                sidebar_filters(catalog, s, {})
                write_url(s)
                return
            likely_taxa(predictor, catalog, image_vec, data)

    result, counts = None, {}
    try:
        result, counts = cached_search(engine, s, image_vec, image_name)
    except (IndexerError, BioclipError) as exc:
        st.error(str(exc))
    hits = result.hits if result is not None else []
    sidebar_filters(catalog, s, counts)
    if result is None:
        write_url(s)
        return

    scored = s.mode != "text" or bool(s.q.strip())
    active_filters(s)
    st.caption(f"Searching for: {ui.md(result.interpretation)}")
    for note in result.notices:
        st.info(note)

    if s.detail is not None:
        found = engine.get([s.detail])
        if not found:
            st.warning(f"There is no image {s.detail} in this collection.")
            st.button("← Back to the results", key="detail_back", on_click=on_back)
        else:
            ui.detail(engine, found[0], lib, on_like=on_like, on_detail=on_detail, on_back=on_back)
        write_url(s)
        return

    shown, start, end, page, pages, total = browse.listing_page(engine, s, result)
    if scored:
        summary = f"**{len(hits):,}** result{'s' if len(hits) != 1 else ''}"
        if result.candidates is not None and s.has_filters():
            summary += f" · {result.candidates:,} images pass the filters"
        summary += f" · {result.elapsed_ms:.0f} ms"
    else:
        summary = f"**{total:,}** image{'s' if total != 1 else ''}" + (" pass the filters" if s.has_filters() else "")
        if total > len(hits):
            summary += f" · the map, chart, filter counts and export describe the first {len(hits):,}"
    st.markdown(summary)
    if not hits:
        st.info("Nothing found. Try other words, another taxon, or fewer filters.")
        write_url(s)
        return

    seed("w_view", s.view)
    st.radio(
        "View",
        browse.VIEWS,
        key="w_view",
        on_change=on_view,
        format_func=_VIEW_LABELS.get,
        horizontal=True,
        label_visibility="collapsed",
    )
    if s.view in ("grid", "table"):
        if s.view == "grid":
            ui.grid(shown, lib, scored=scored, key="res", on_like=on_like, on_detail=on_detail)
        else:
            table(shown, lib, s, scored)
        pager(page, pages, start, end, total)
    elif s.view == "map":
        points = browse.map_points(hits)
        if points:
            st.caption(f"{len(points)} of {len(hits)} results have coordinates.")
            st.map(
                {"lat": [p["lat"] for p in points], "lon": [p["lon"] for p in points]}, latitude="lat", longitude="lon"
            )
        else:
            st.info("None of these results has coordinates.")
    else:
        ranks = catalog.ranks() or list(browse.RANKS)
        seed("w_chart_rank", "family" if "family" in ranks else ranks[-1])
        rank = st.selectbox("Rank", ranks, key="w_chart_rank")
        counts = browse.taxa_counts(hits, rank)[:30]
        st.bar_chart(
            {"taxon": [c[0] for c in counts], "images": [c[1] for c in counts]},
            x="taxon",
            y="images",
            horizontal=True,
            sort="-images",
        )

    export_row(engine, lib, s, result, image_name)
    write_url(s)


def table(hits, lib, s: BrowseState, scored: bool) -> None:
    """The table view: a thumbnail, the card's fields, and a link that opens the record's detail view."""
    rows = browse.result_rows(hits, lib, scored=scored)
    for hit, row in zip(hits, rows):
        thumb = lib.thumbnail(hit, 96)
        if isinstance(thumb, bytes):
            thumb = "data:image/jpeg;base64," + base64.b64encode(thumb).decode("ascii")
        row["image"] = thumb
        row["details"] = f"?{replace(s, detail=hit.id).query_string()}"
        row["scientificName"] = row["scientificName"] or ""
    columns = ["image", "details", *[c for c in rows[0] if c not in ("image", "details")]] if rows else []
    st.dataframe(
        {c: [r[c] for r in rows] for c in columns},
        hide_index=True,
        width="stretch",
        row_height=56,
        column_config={
            "image": st.column_config.ImageColumn("image", width="small"),
            "details": st.column_config.LinkColumn(
                "details", display_text="open", width="small", help="The record's detail view (in a new tab)"
            ),
        },
    )


def suggestions(engine, s: BrowseState) -> None:
    """Taxa of the collection matching what was typed (or the largest ones before any search)."""
    if s.mode != "text":
        return
    if s.q.strip():
        matches = browse.suggest_taxa(engine, s.q, limit=6)
        title = "Taxa in this collection:"
    else:
        matches = [m for r in ("species", "genus", "family") for m in engine.taxonomy.taxa(r)[:6]][:6]
        title = "Try a taxon from this collection:"
    if not matches:
        return
    st.caption(title)
    cols = st.columns(min(3, len(matches)))
    for i, m in enumerate(matches):
        cols[i % len(cols)].button(
            browse.describe_taxon(m), key=f"sugg_{i}", on_click=on_pick_taxon, args=(m.name,), width="stretch"
        )


def upload_vector(engine, upload):
    """(embedding, name, bytes) of the uploaded picture, embedded once per distinct file."""
    data = upload.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    cached = ss.get("_upload")
    if cached and cached["digest"] == digest:
        return cached["vector"], cached["name"], data
    browse.read_upload(upload.name, data)
    with st.spinner("Reading the picture…"):
        vec = engine.embed_image(data)
    ss["_upload"] = {"digest": digest, "vector": vec, "name": upload.name}
    return vec, upload.name, data


def likely_taxa(predictor, catalog, vector, data: bytes) -> None:
    ranks = catalog.ranks()
    if not ranks:
        return
    with st.container(border=True):
        left, right = st.columns([1, 3])
        left.image(data, width="stretch")
        with right:
            seed("w_zs_rank", "species" if "species" in ranks else ranks[-1])
            if ss["w_zs_rank"] not in ranks:
                ss["w_zs_rank"] = ranks[-1]
            rank = st.selectbox("Most likely taxa in this collection, at rank", ranks, key="w_zs_rank")
            try:
                with st.spinner("Comparing with the collection's taxa…"):
                    scores = predictor.predict(vector, rank, k=5)
            except (IndexerError, BioclipError) as exc:
                st.warning(str(exc))
                return
            for t in scores:
                label = f"*{ui.md(t.name)}*" + (f" ({ui.md(t.common_name)})" if t.common_name else "")
                st.progress(min(1.0, max(0.0, t.score)), text=f"{label} — {t.score:.1%} · {t.images} images")
            st.caption(
                "Zero-shot scores against this collection's own taxa; they sum to 100% over its taxa at this rank."
            )


def cached_search(engine, s: BrowseState, image_vec, image_name):
    """(result, sidebar counts) for the state, recomputed only when the search changes."""
    upload = ss.get("_upload", {}).get("digest") if s.mode == "image" else None
    key = (engine.collection.path, engine.generation, s.mode, s.q, s.like, s.values, s.year, s.coords, s.k, upload)
    cached = ss.get("_result")
    if cached and cached[0] == key:
        return cached[1]
    with st.spinner("Searching…"):
        result = browse.run_search(engine, s, image_vector=image_vec, image_name=image_name)
        counts = browse.facet_counts(engine, s, result.hits, image_vector=image_vec)
    ss["_result"] = (key, (result, counts))
    return result, counts


def sidebar_filters(catalog, s: BrowseState, counts) -> None:
    with st.sidebar:
        st.header("Filters")
        st.caption("Numbers: results with each value; for a filter in use, the results without it.")
        ranks = catalog.ranks()
        if ranks:
            active = [r for r in ranks if s.selected(r)]
            seed("w_taxon_rank", active[0] if active else ("family" if "family" in ranks else ranks[-1]))
            if ss["w_taxon_rank"] not in ranks:
                ss["w_taxon_rank"] = ranks[-1]
            rank = st.selectbox("Taxon rank", ranks, key="w_taxon_rank")
            multi_filter(catalog, s, rank, f"Taxon ({rank})", counts)
        for spec in browse.FACET_FIELDS:
            if catalog.options(spec.param) or s.selected(spec.param):
                multi_filter(catalog, s, spec.param, spec.label, counts)
        years = catalog.year_range()
        if years and years[0] < years[1]:
            lo, hi = s.year or years
            lo = years[0] if lo is None else max(years[0], min(lo, years[1]))
            hi = years[1] if hi is None else min(years[1], max(hi, years[0]))
            seed("w_year", (lo, hi))
            st.slider("Year", years[0], years[1], key="w_year", on_change=on_year, args=(years,))
        if catalog.has_coordinates() or s.coords is not None:
            seed("w_coords", next(k for k, v in _COORDS.items() if v == s.coords))
            st.radio("Coordinates", list(_COORDS), key="w_coords", on_change=on_coords)
        seed("w_k", s.k if s.k in browse.K_CHOICES else browse.DEFAULT_K)
        st.select_slider(
            "Results per search",
            browse.K_CHOICES,
            key="w_k",
            on_change=on_k,
            help="How many results the search returns; the facets, map, chart and export describe them.",
        )


def multi_filter(catalog, s: BrowseState, param: str, label: str, counts) -> None:
    key = f"w_f_{param}"
    options = [v for v, _ in catalog.options(param)]
    chosen = list(s.selected(param))
    options += [v for v in chosen if v not in options]
    seed(key, chosen)
    ss[key] = [v for v in ss[key] if v in options]
    here = counts.get(param, {})
    st.multiselect(
        label,
        options,
        key=key,
        on_change=on_filter,
        args=(param,),
        format_func=lambda v: f"{v} · {here.get(v, 0)}",
        placeholder="any",
    )


def active_filters(s: BrowseState) -> None:
    chips = [(p, v, f"{browse.filter_label(p)}: {v}") for p, vals in s.values for v in vals]
    if s.year is not None:
        lo, hi = s.year
        chips.append(("year", None, f"year: {lo if lo is not None else '…'}–{hi if hi is not None else '…'}"))
    if s.coords is not None:
        chips.append(("has_coordinates", None, "with coordinates" if s.coords else "without coordinates"))
    if not chips:
        return
    cols = st.columns(min(6, len(chips) + 1))
    for i, (param, value, text) in enumerate(chips):
        cols[i % (len(cols) - 1 or 1)].button(
            f"✕ {text}", key=f"chip_{i}", on_click=on_remove_filter, args=(param, value)
        )
    cols[-1].button("Clear filters", key="chip_clear", on_click=on_clear_filters)


def pager(page: int, pages: int, start: int, end: int, total: int) -> None:
    if pages <= 1:
        return
    c1, c2, c3 = st.columns([1, 2, 1])
    c1.button("‹ Previous", key="page_prev", on_click=on_page, args=(page - 1,), disabled=page <= 1)
    c2.caption(f"Page {page} of {pages} · results {start + 1}–{end} of {total}")
    c3.button("Next ›", key="page_next", on_click=on_page, args=(page + 1,), disabled=page >= pages)


def export_row(engine, lib, s: BrowseState, result, image_name) -> None:
    data = browse.export_csv(
        result.hits,
        s,
        media=lib,
        collection=str(engine.collection.path),
        interpretation=result.interpretation,
        image_name=image_name,
    )
    c1, c2 = st.columns([1, 3])
    c1.download_button(
        "Download results (CSV)", data=data, file_name="bioclip-search-results.csv", mime="text/csv", key="export"
    )
    if s.mode != "image":
        c2.caption(f"Link to this search: [?{ui.md(s.query_string())}](?{s.query_string()})")
    else:
        c2.caption("A search by an uploaded picture cannot be shared as a link; the filters are in the URL.")


def url_params() -> dict[str, list[str]]:
    return {k: st.query_params.get_all(k) for k in st.query_params}


def write_url(s: BrowseState) -> None:
    """Put the state in the page URL (only when it changed, so each step is one entry in the
    browser's history), and remember it: an address that differs on the next run was changed by
    the browser (Back, Forward) and is read back into the state."""
    want = s.to_params()
    if url_params() != want:
        st.query_params.from_dict(want)
    ss["_url"] = url_params()


def run() -> None:
    try:
        main()
    except (IndexerError, BioclipError) as exc:
        st.error(str(exc))
    except Exception:  # the visitor gets a short message; the details go to the server log
        log.exception("unexpected error in the search page")
        st.error("Something went wrong on our side (the details are in the server log). Try another search.")


run()
