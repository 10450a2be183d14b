"""The detail view of one image (Streamlit): the image, what a curator reads first, every field of
the record (long values wrap, nothing is cut off), the other images of the same specimen, similar
images, and the way back and forth through the results (buttons and the arrow keys)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from search_ui import searching, ui
from search_ui.hit_fields import alt_text, detail_fields, key_facts, license_link, source_record_url
from search_ui.session import change
from search_ui.state import BrowseState
from search_ui.views import Context

__all__ = ["detail_view", "detail_missing"]


def detail_missing(s: BrowseState, replacement: Any = None) -> None:
    """``?detail=ID`` of no image: why (a retired id says what became of it), and the way back."""
    text = (
        replacement.describe() + "." if replacement is not None else f"There is no image {s.detail} in this collection."
    )
    st.warning(ui.md(text))
    st.button("← Back to the results", key="detail_back", on_click=change, args=(BrowseState.without_detail,))


def _navigation(hit: Any, hits: list) -> None:
    """Back (Esc), previous (←) and next (→) result, and where this one is in the results."""
    ids = [h.id for h in hits]
    pos = ids.index(hit.id) if hit.id in ids else None
    with st.container(horizontal=True, gap="small", vertical_alignment="center", key="detail_nav"):
        st.button(
            "← Back to the results",
            key="detail_back",
            on_click=change,
            args=(BrowseState.without_detail,),
            shortcut="Esc",
            help="Esc",
        )
        if pos is None:
            st.caption("This image is not among the current results.")
            return
        prev_id = ids[pos - 1] if pos > 0 else None
        next_id = ids[pos + 1] if pos + 1 < len(ids) else None
        page = lambda i: i // searching.PAGE_SIZE + 1  # noqa: E731 - the results page of position i
        st.button(
            "‹ Previous",
            key="detail_prev",
            on_click=change,
            args=(BrowseState.with_detail, prev_id, page(pos - 1)),
            disabled=prev_id is None,
            shortcut="Left",
            help="Previous result (←)",
        )
        st.markdown(f"Result **{pos + 1:,}** of {len(ids):,}")
        st.button(
            "Next ›",
            key="detail_next",
            on_click=change,
            args=(BrowseState.with_detail, next_id, page(pos + 1)),
            disabled=next_id is None,
            shortcut="Right",
            help="Next result (→)",
        )


def detail_view(ctx: Context, hit: Any, hits: list) -> None:
    """The detail view of ``hit``; ``hits``: the current results (for previous / next)."""
    engine, lib = ctx.engine, ctx.media
    _navigation(hit, hits)
    left, right = st.columns([3, 2])
    with left:
        ui.show_image(lib.detail_image(hit), alt=alt_text(hit))
    with right:
        name = hit.scientific_name
        st.subheader(ui.sci_name(name) if name else f"Image {hit.id}")
        if hit.metadata.get("vernacularName"):
            st.markdown(ui.md(hit.metadata["vernacularName"]))
        facts = key_facts(hit)
        if facts:
            st.markdown("  \n".join(f"**{ui.md(line)}**" if i == 0 else ui.md(line) for i, line in enumerate(facts)))
        lic = license_link(hit)
        holder = hit.metadata.get("rightsHolder")
        if lic is None:
            lic_text = "not recorded"
        elif lic[1]:
            lic_text = f"[{ui.md(lic[0])}](<{lic[1]}>)"  # the URL is ours, or an http(s) URL without spaces or <>
        else:
            lic_text = ui.md(lic[0])
        st.markdown(f"**License:** {lic_text}  \n**Rights holder:** {ui.md(holder) if holder else 'not recorded'}")
        url = source_record_url(hit)
        if url:
            st.link_button("Open the source record", url)
        elif hit.metadata.get("occurrenceID"):
            st.caption(f"occurrenceID: {ui.md(hit.metadata['occurrenceID'])}")
        st.button(
            "More like this",
            key="detail_like",
            on_click=change,
            args=(BrowseState.more_like, hit.id),
            kwargs={"sync": True},
        )
    rows = detail_fields(hit)
    with st.expander(f"All {searching.plural(len(rows), 'field')} of this record", expanded=True):
        # a static table: long values (localities, remarks, URLs) wrap instead of being cut off
        st.table({"field": [r[0] for r in rows], "value": [r[1] for r in rows]}, hide_index=True)
    others = engine.records_of(hit, limit=12)
    if others:
        st.markdown(f"**Other images of this specimen** ({len(others)})")
        ui.grid(others, lib, scored=False, key="rec")
    similar = engine.similar(hit.id, k=8).hits
    if similar:
        st.markdown("**Similar images** in the whole collection")
        ui.grid(similar, lib, scored=True, key="sim")
