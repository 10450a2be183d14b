"""The results of the search page (Streamlit): the view picker, the grid of cards (each can be
selected), the table, the map and the taxonomy tree, the pager (← and → turn pages), what can be
done with the selected results, and the export."""

from __future__ import annotations

import base64
from typing import Any

import streamlit as st

from search_ui import searching, ui
from search_ui.export import export_csv
from search_ui.hit_fields import result_rows
from search_ui.session import bound, change, seed
from search_ui.state import VIEWS, BrowseState
from search_ui.views.map import map_view
from search_ui.views.taxonomy import taxonomy_view

__all__ = ["results_view", "pager", "export_row", "selection_bar"]

_VIEW_LABELS = {"grid": "Grid", "table": "Table", "map": "Map", "taxa": "Taxonomy"}


def results_view(s: BrowseState, hits: list, shown: list, lib: Any) -> None:
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
        ui.grid(shown, lib, scored=s.scored, key="res", selected=s.selection)
    elif s.view == "table":
        _table(shown, lib, s)
    elif s.view == "map":
        map_view(s, hits)
    else:
        taxonomy_view(s, hits)


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


def pager(page: int, pages: int, start: int, end: int, total: int) -> None:
    if pages <= 1:
        return
    with st.container(horizontal=True, gap="medium", vertical_alignment="center", key="pager"):
        st.button(
            "‹ Previous",
            key="page_prev",
            on_click=change,
            args=(BrowseState.with_page, page - 1),
            disabled=page <= 1,
            shortcut="Left",
            help="Previous page (←)",
        )
        st.caption(f"Page {page} of {pages} · results {start + 1}–{end} of {total}")
        st.button(
            "Next ›",
            key="page_next",
            on_click=change,
            args=(BrowseState.with_page, page + 1),
            disabled=page >= pages,
            shortcut="Right",
            help="Next page (→)",
        )


def selection_bar(engine: Any, lib: Any, s: BrowseState, result: Any) -> None:
    """What can be done with the selected results: search like them (the mean of their vectors),
    download them, clear the selection."""
    if not s.selection:
        return
    hits = engine.get(list(s.selection))
    with st.container(horizontal=True, gap="small", vertical_alignment="center", border=True, key="selection"):
        st.markdown(f"**{searching.plural(len(hits), 'result')} selected**")
        st.button(
            "More like these",
            key="sel_like",
            on_click=change,
            args=(BrowseState.more_like_these, s.selection),
            kwargs={"sync": True},
            help="Images like the selected ones taken together (the mean of their vectors)",
            type="primary",
        )
        st.download_button(
            "Download the selected (CSV)",
            data=export_csv(
                hits,
                s,
                media=lib,
                collection=str(engine.collection.path),
                interpretation=f"{searching.plural(len(hits), 'selected result')} of: {result.interpretation}",
            ),
            file_name="bioclip-search-selected.csv",
            mime="text/csv",
            key="sel_export",
        )
        st.button("Clear the selection", key="sel_clear", on_click=change, args=(BrowseState.without_selection,))


def export_row(engine: Any, lib: Any, s: BrowseState, result: Any, image_name: str | None) -> None:
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
    c2.caption(f"Link to this search: [?{ui.md(s.query_string())}](?{s.query_string()})")
