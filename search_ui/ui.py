"""Drawing helpers of the pages (Streamlit): Markdown escaping, result cards and grids, the
detail view. Every decision comes from :mod:`search_ui.hit_fields` and the engine; buttons change the
session's state through :func:`search_ui.session.change`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import streamlit as st

from search_ui.hit_fields import card_fields, detail_fields, key_facts, license_link, source_record_url, split_name
from search_ui.session import change
from search_ui.state import BrowseState

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|<>~$])")


def md(text: Any) -> str:
    """Escape text from the collection for Markdown (no links, emphasis or HTML sneak in)."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def sci_name(name: str) -> str:
    """A scientific name for Markdown: the name in italics, its authorship not."""
    canonical, author = split_name(name)
    if not canonical:
        return ""
    return f"*{md(canonical)}*" + (f" {md(author)}" if author else "")


def show_image(data: bytes | str | None, *, caption: str | None = None) -> None:
    """A thumbnail (JPEG bytes), a remote image (URL) or a placeholder."""
    if data is None:
        st.markdown(
            "<div style='height:160px;display:flex;align-items:center;justify-content:center;"
            "background:#f0f2f6;color:#888;border-radius:4px'>no image</div>",
            unsafe_allow_html=True,
        )
        return
    st.image(data, caption=caption, width="stretch")


def card(hit: Any, lib: Any, *, scored: bool, key: str) -> None:
    """One result: thumbnail, scientific name in italics, rank, catalog number, institution,
    date, score, and the "Details" and "More like this" buttons."""
    f = card_fields(hit, scored=scored)
    with st.container(border=True):
        show_image(lib.thumbnail(hit))
        name = sci_name(f["name"]) if f["named"] else md(f["name"])
        st.markdown(f"{name}" + (f"  \n{md(f['vernacular'])}" if f["vernacular"] and f["named"] else ""))
        bits = [
            f["rank"],
            f"cat. {f['catalogNumber']}" if f["catalogNumber"] else None,
            f["institution"],
            f["date"],
            f"score {f['score']:.3f}" if f["score"] is not None else None,
        ]
        st.caption(" · ".join(md(b) for b in bits if b) or f"image {hit.id}")
        st.caption(md(f["file"]), help=md(lib.link(hit)))
        c1, c2 = st.columns([2, 3], gap="small")
        c1.button(
            "Details",
            key=f"{key}_detail_{hit.id}",
            on_click=change,
            args=(BrowseState.with_detail, hit.id),
            type="tertiary",
        )
        c2.button(
            "More like this",
            key=f"{key}_like_{hit.id}",
            on_click=change,
            args=(BrowseState.more_like, hit.id),
            type="tertiary",
        )


def grid(hits: Sequence, lib: Any, *, scored: bool, key: str, columns: int = 4) -> None:
    for start in range(0, len(hits), columns):
        cols = st.columns(columns)
        for col, hit in zip(cols, hits[start : start + columns]):
            with col:
                card(hit, lib, scored=scored, key=key)


def detail(engine: Any, hit: Any, lib: Any) -> None:
    """The detail view of one image."""
    st.button("← Back to the results", key="detail_back", on_click=change, args=(BrowseState.without_detail,))
    left, right = st.columns([3, 2])
    with left:
        show_image(lib.detail_image(hit))
    with right:
        name = hit.scientific_name
        st.subheader(sci_name(name) if name else f"Image {hit.id}")
        if hit.metadata.get("vernacularName"):
            st.markdown(md(hit.metadata["vernacularName"]))
        facts = key_facts(hit)
        if facts:
            st.markdown("  \n".join(f"**{md(line)}**" if i == 0 else md(line) for i, line in enumerate(facts)))
        lic = license_link(hit)
        holder = hit.metadata.get("rightsHolder")
        if lic is None:
            lic_text = "not recorded"
        elif lic[1]:
            lic_text = f"[{md(lic[0])}](<{lic[1]}>)"  # the URL is ours, or an http(s) URL without spaces or <>
        else:
            lic_text = md(lic[0])
        st.markdown(f"**License:** {lic_text}  \n**Rights holder:** {md(holder) if holder else 'not recorded'}")
        url = source_record_url(hit)
        if url:
            st.link_button("Open the source record", url)
        elif hit.metadata.get("occurrenceID"):
            st.caption(f"occurrenceID: {md(hit.metadata['occurrenceID'])}")
        st.button("More like this", key="detail_like", on_click=change, args=(BrowseState.more_like, hit.id))
    rows = detail_fields(hit)
    with st.expander(f"All {len(rows)} fields of this record", expanded=True):
        st.dataframe(
            {"field": [r[0] for r in rows], "value": [r[1] for r in rows]},
            hide_index=True,
            width="stretch",
            height=min(36 + 35 * len(rows), 1400),
        )
    others = engine.records_of(hit, limit=12)
    if others:
        st.markdown(f"**Other images of this specimen** ({len(others)})")
        grid(others, lib, scored=False, key="rec", columns=6)
    similar = engine.similar(hit.id, k=8).hits
    if similar:
        st.markdown("**Similar images** in the whole collection")
        grid(similar, lib, scored=True, key="sim", columns=4)
