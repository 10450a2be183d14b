"""The search page (Streamlit): the search box and its suggestions, a photo upload with the most
likely taxa, the results as a grid, a table, a map or a chart, the detail view, the export."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace
from typing import Any

import streamlit as st

from bioclip.errors import BioclipError
from indexer.errors import IndexerError
from indexer.store.schema import RANKS
from search_ui import searching, ui, upload
from search_ui.export import export_csv
from search_ui.hit_fields import result_rows
from search_ui.session import bound, change, memo, seed, set_state, state
from search_ui.state import VIEWS, BrowseState
from search_ui.taxa import TaxaPredictor
from search_ui.views import Context
from search_ui.views.filters import active_filters, sidebar_filters

__all__ = ["search_page"]

ss = st.session_state
_VIEW_LABELS = {"grid": "Grid", "table": "Table", "map": "Map", "taxa": "Taxa chart"}


def search_page(ctx: Context) -> None:
    engine, lib, catalog, predictor = ctx.engine, ctx.media, ctx.catalog, ctx.predictor
    s = state()
    top_q, top_up = st.columns([3, 2])
    with top_q:
        seed("w_q", s.q)
        st.text_input(
            "Search",
            **bound("w_q", BrowseState.search_text),
            placeholder="A taxon at any rank (Corvidae, Corvus corax, common raven) or any words",
            help="A name the collection knows is searched as that taxon; anything else as free text.",
        )
        _suggestions(engine, s)
    with top_up:
        st.file_uploader(
            "…or search with a photo",
            type=list(upload.UPLOAD_TYPES),
            **bound("w_upload", BrowseState.upload_changed),
            help=f"JPEG, PNG, TIFF or WebP, up to {upload.MAX_UPLOAD_BYTES // (1024 * 1024)} MB. It stays in memory.",
        )

    image_vec, image_name, digest = None, None, None
    if s.mode != "image" and ss.get("w_upload") is not None:
        with top_up:
            st.button(
                "Search with this photo again", key="upload_again", on_click=change, args=(BrowseState.with_upload,)
            )
    if s.mode == "image":
        uploaded = ss.get("w_upload")
        if uploaded is None:
            s = replace(s, mode="text")
            set_state(s)
        else:
            data = uploaded.getvalue()
            digest = hashlib.sha256(data).hexdigest()
            image_name = uploaded.name
            try:
                image_vec = memo(
                    "upload", (engine.collection.path, digest), lambda: _embed_upload(engine, image_name, data)
                )
            except (IndexerError, BioclipError) as exc:  # UploadError, or the model cannot read it
                st.error(str(exc))
                sidebar_filters(catalog, s, {})
                return
            _likely_taxa(predictor, catalog, image_vec, data)

    result: Any = None
    counts: dict[str, Any] = {}
    try:
        key = (engine.collection.path, engine.generation, s.search_key(), digest)
        result, counts = memo("search", key, lambda: _search(engine, s, image_vec, image_name))
    except (IndexerError, BioclipError) as exc:
        st.error(str(exc))
    sidebar_filters(catalog, s, counts)
    if result is None:
        return
    active_filters(s)
    st.caption(f"Searching for: {ui.md(result.interpretation)}")
    for note in result.notices:
        st.info(note)

    if s.detail is not None:
        found = engine.get([s.detail])
        if not found:
            st.warning(f"There is no image {s.detail} in this collection.")
            st.button("← Back to the results", key="detail_back", on_click=change, args=(BrowseState.without_detail,))
        else:
            ui.detail(engine, found[0], lib)
        return

    shown, start, end, page, pages, total = searching.listing_page(engine, s, result)
    st.markdown(searching.result_summary(s, result, total))
    if not result.hits:
        st.info("Nothing found. Try other words, another taxon, or fewer filters.")
        return
    _results(s, result.hits, shown, lib, catalog)
    if s.view in ("grid", "table"):
        _pager(page, pages, start, end, total)
    _export_row(engine, lib, s, result, image_name)


def _search(engine: Any, s: BrowseState, image_vec: Any, image_name: str | None) -> tuple[Any, dict]:
    with st.spinner("Searching…"):
        result = searching.run_search(engine, s, image_vector=image_vec, image_name=image_name)
        counts = searching.facet_counts(engine, s, result.hits, image_vector=image_vec)
    return result, counts


def _embed_upload(engine: Any, name: str, data: bytes) -> Any:
    upload.read_upload(name, data)
    with st.spinner("Reading the picture…"):
        return engine.embed_image(data)


def _results(s: BrowseState, hits: list, shown: list, lib: Any, catalog: Any) -> None:
    seed("w_view", s.view)
    st.radio(
        "View",
        VIEWS,
        **bound("w_view", BrowseState.with_view),
        format_func=_VIEW_LABELS.get,
        horizontal=True,
        label_visibility="collapsed",
    )
    if s.view == "grid":
        ui.grid(shown, lib, scored=s.scored, key="res")
    elif s.view == "table":
        _table(shown, lib, s)
    elif s.view == "map":
        points = searching.map_points(hits)
        if points:
            st.caption(f"{len(points)} of {len(hits)} results have coordinates.")
            st.map(
                {"lat": [p["lat"] for p in points], "lon": [p["lon"] for p in points]}, latitude="lat", longitude="lon"
            )
        else:
            st.info("None of these results has coordinates.")
    else:
        ranks = catalog.ranks() or list(RANKS)
        seed("w_chart_rank", "family" if "family" in ranks else ranks[-1])
        rank = st.selectbox("Rank", ranks, key="w_chart_rank")
        counts = searching.taxa_counts(hits, rank)[:30]
        st.bar_chart(
            {"taxon": [c[0] for c in counts], "images": [c[1] for c in counts]},
            x="taxon",
            y="images",
            horizontal=True,
            sort="-images",
        )


def _table(hits: list, lib: Any, s: BrowseState) -> None:
    """The table view: a thumbnail, the card's fields, and a link that opens the record's detail view."""
    rows = result_rows(hits, lib, scored=s.scored)
    for hit, row in zip(hits, rows):
        thumb = lib.thumbnail(hit, 96)
        if isinstance(thumb, bytes):
            thumb = "data:image/jpeg;base64," + base64.b64encode(thumb).decode("ascii")
        row["image"] = thumb
        row["details"] = f"?{s.with_detail(hit.id).query_string()}"
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


def _suggestions(engine: Any, s: BrowseState) -> None:
    """Taxa of the collection matching what was typed (or the largest ones before any search)."""
    if s.mode != "text":
        return
    if s.q.strip():
        matches = searching.suggest_taxa(engine, s.q, limit=6)
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
            searching.describe_taxon(m),
            key=f"sugg_{i}",
            on_click=change,
            args=(BrowseState.search_text, m.name),
            kwargs={"sync": True},
            width="stretch",
        )


def _likely_taxa(predictor: TaxaPredictor, catalog: Any, vector: Any, data: bytes) -> None:
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
            note = predictor.coverage()
            st.caption(
                "Zero-shot scores against this collection's own species (pybioclip's method); a higher rank's "
                "score is the sum of its species' scores." + (f" {note}" if note else "")
            )


def _pager(page: int, pages: int, start: int, end: int, total: int) -> None:
    if pages <= 1:
        return
    c1, c2, c3 = st.columns([1, 2, 1])
    c1.button(
        "‹ Previous", key="page_prev", on_click=change, args=(BrowseState.with_page, page - 1), disabled=page <= 1
    )
    c2.caption(f"Page {page} of {pages} · results {start + 1}–{end} of {total}")
    c3.button(
        "Next ›", key="page_next", on_click=change, args=(BrowseState.with_page, page + 1), disabled=page >= pages
    )


def _export_row(engine: Any, lib: Any, s: BrowseState, result: Any, image_name: str | None) -> None:
    data = export_csv(
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
