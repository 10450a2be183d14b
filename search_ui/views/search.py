"""The search page (Streamlit): the search box and the photo upload, what is searched (each part
removable), the most likely taxa of a photo, the results as a grid, a table, a map or a taxonomy
tree, the selected results, the detail view, the export."""

from __future__ import annotations

from typing import Any

import streamlit as st

from bioclip.errors import BioclipError
from indexer.errors import IndexerError
from search_ui import searching, ui, upload
from search_ui.photo_cache import CachedPhoto
from search_ui.session import memo, seed, set_state, state
from search_ui.state import BrowseState
from search_ui.taxa import TaxaPredictor
from search_ui.views import Context
from search_ui.views.detail import detail_missing, detail_view
from search_ui.views.filters import sidebar_filters
from search_ui.views.loading import wait_for_model
from search_ui.views.querybar import pending_photo, query_bar, search_box, suggestions, upload_box
from search_ui.views.results import export_row, pager, results_view, selection_bar

__all__ = ["search_page", "search_header", "EMPTY_MESSAGE"]

ss = st.session_state

#: What an empty collection says (with the command that fills it).
EMPTY_MESSAGE = (
    "This collection is empty: no images have been added to it yet. Add images with\n\n"
    "```\nbioclip-index build {path} FOLDER_OR_ARCHIVE\n```\n\n"
    "(a folder of images, a CSV or Parquet list of files or URLs, a Darwin Core Archive or tar shards; "
    "`bioclip-index build --help` lists them), then reload this page."
)


def search_header(engine: Any, s: BrowseState) -> None:
    """The search box and the photo upload (drawn while the collection still opens, too)."""
    top_q, top_up = st.columns([3, 2])
    with top_q:
        search_box(s)
    with top_up:
        upload_box(s)
    if engine is not None:  # the whole width: the suggestions fit on one or two lines
        suggestions(engine, s)


def _needs_model(s: BrowseState, photo: CachedPhoto | None) -> bool:
    return (s.mode == "text" and bool(s.q.strip())) or (s.mode == "image" and photo is None)


def _photo(ctx: Context, s: BrowseState) -> CachedPhoto | None:
    """The photo searched with: kept in the collection's cache, or just uploaded (then embedded
    and kept). Raises QueryError/UploadError/BioclipError with a message."""
    kept = ctx.photos.get(s.photo) if s.photo else None
    if kept is not None:
        return kept
    pending = pending_photo(s)
    if pending is None:
        from indexer.errors import QueryError

        raise QueryError(
            "the photo of this link is no longer kept (photos are kept for a while after they are uploaded, "
            "within a size limit): upload it again"
        )
    name, data = pending
    upload.read_upload(name, data)
    with st.spinner("Reading the photo…"):
        vector = ctx.engine.embed_image(data)
    ctx.photos.put(data, name, vector)
    return ctx.photos.get(s.photo) or CachedPhoto(s.photo or "", name, vector, data, 0.0)


def search_page(ctx: Context) -> None:
    engine, lib, catalog, predictor = ctx.engine, ctx.media, ctx.catalog, ctx.predictor
    s = state()
    search_header(engine, s)
    if engine.count() == 0 and not s.has_filters():
        st.info(EMPTY_MESSAGE.format(path=engine.collection.path))
        return

    photo: CachedPhoto | None = None
    if s.mode == "image":
        if ctx.status is not None and not ctx.status.model_ready and ctx.photos.get(s.photo or "") is None:
            query_bar(ctx, s)
            wait_for_model(ctx.status)
            sidebar_filters(catalog, s, {})
            return
        try:
            photo = _photo(ctx, s)
        except (IndexerError, BioclipError) as exc:  # UploadError, a link to a photo no longer kept
            query_bar(ctx, s)
            st.error(ui.md(exc))
            sidebar_filters(catalog, s, {})
            return
        if photo is not None:
            _likely_taxa(predictor, catalog, photo.vector, photo.preview)

    query_bar(ctx, s, photo)
    if ctx.status is not None and not ctx.status.model_ready and _needs_model(s, photo):
        wait_for_model(ctx.status)
        sidebar_filters(catalog, s, {})
        return
    result: Any = None
    counts: dict[str, Any] = {}
    vec = photo.vector if photo is not None else None
    name = photo.name if photo is not None else None
    try:
        key = (engine.collection.path, engine.generation, s.search_key())
        result, counts = memo("search", key, lambda: _search(engine, s, vec, name))
    except (IndexerError, BioclipError) as exc:
        st.error(ui.md(exc))
    sidebar_filters(catalog, s, counts)
    if result is None:
        return
    st.caption(f"Searching for: {ui.md(result.interpretation)}")
    said = result.searched_as
    st.caption(ui.md(said[:1].upper() + said[1:]))  # the query kind, and the recall that applies to it
    for note in result.notices:
        st.info(ui.md(note))

    if s.detail is not None:
        found = engine.get([s.detail])
        if not found:
            # A link to an image whose file changed: say so and show the image that replaced it.
            rep = engine.replacement(s.detail)
            found = engine.get([rep.new_id]) if rep is not None and rep.new_id is not None else []
            if found:
                st.info(ui.md(f"{rep.describe()}; showing image {rep.new_id}."))
                set_state(s.with_detail(rep.new_id))
        if not found:
            detail_missing(s, engine.replacement(s.detail))
        else:
            detail_view(ctx, found[0], list(result.hits))
        return

    shown, start, end, page, pages, total = searching.listing_page(engine, s, result)
    st.markdown(searching.result_summary(s, result, total))
    if not result.hits:
        st.info("Nothing found. Try other words, another taxon, or fewer filters.")
        return
    selection_bar(engine, lib, s, result)
    results_view(s, result.hits, shown, lib)
    if s.view in ("grid", "table"):
        pager(page, pages, start, end, total)
    export_row(engine, lib, s, result, name)


def _search(engine: Any, s: BrowseState, image_vec: Any, image_name: str | None) -> tuple[Any, dict]:
    with st.spinner("Searching…"):
        result = searching.run_search(engine, s, image_vector=image_vec, image_name=image_name)
        counts = searching.facet_counts(engine, s, result.hits, image_vector=image_vec)
    return result, counts


def _likely_taxa(predictor: TaxaPredictor, catalog: Any, vector: Any, data: bytes | None) -> None:
    ranks = catalog.ranks()
    if not ranks:
        return
    with st.container(border=True):
        left, right = st.columns([1, 3])
        if data:
            left.image(data, width="stretch", alt="The photo searched with")
        with right:
            seed("w_zs_rank", "species" if "species" in ranks else ranks[-1])
            if ss["w_zs_rank"] not in ranks:
                ss["w_zs_rank"] = ranks[-1]
            rank = st.selectbox("Most likely taxa in this collection, at rank", ranks, key="w_zs_rank")
            try:
                with st.spinner("Comparing with the collection's taxa…"):
                    scores = predictor.predict(vector, rank, k=5)
            except (IndexerError, BioclipError) as exc:
                st.warning(ui.md(exc))
                return
            for t in scores:
                label = f"*{ui.md(t.name)}*" + (f" ({ui.md(t.common_name)})" if t.common_name else "")
                st.progress(min(1.0, max(0.0, t.score)), text=f"{label} — {t.score:.1%} · {t.images} images")
            note = predictor.coverage()
            st.caption(
                "Zero-shot scores against this collection's own species (pybioclip's method); a higher rank's "
                "score is the sum of its species' scores." + (f" {note}" if note else "")
            )
