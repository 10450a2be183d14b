"""Drawing helpers of the pages (Streamlit): Markdown escaping, the page's style, images with their
alternative text, result cards and grids (the detail view is in ``views/detail.py``). Every decision comes from :mod:`search_ui.hit_fields` and the engine; buttons change the
session's state through :func:`search_ui.session.change`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import streamlit as st

from search_ui.hit_fields import alt_text, card_fields, split_name
from search_ui.session import change
from search_ui.state import BrowseState
from search_ui.text import md


def sci_name(name: str) -> str:
    """A scientific name for Markdown: the name in italics, its authorship not."""
    canonical, author = split_name(name)
    if not canonical:
        return ""
    return f"*{md(canonical)}*" + (f" {md(author)}" if author else "")


#: A result card's width in pixels: cards wrap into as many columns as the screen holds (three
#: on a laptop, six or more on a wide monitor), and every card is wide enough for its buttons.
CARD_WIDTH = 236

#: Readable contrast (WCAG AA, 4.5:1 and more) for the grey text Streamlit uses for captions and
#: for the tertiary buttons' blue; the indentation of the taxonomy tree.
_STYLE = """
<style>
[data-testid="stCaptionContainer"], [data-testid="stCaptionContainer"] p { color: #45474f !important; }
[data-testid="stBaseButton-tertiary"] p { color: #0b57b0; }
[data-testid="stBaseButton-tertiary"]:hover p { text-decoration: underline; }
[class*="st-key-tn1_"] { margin-left: 1.6rem; }
[class*="st-key-tn2_"] { margin-left: 3.2rem; }
[class*="st-key-tn3_"] { margin-left: 4.8rem; }
[class*="st-key-tn4_"] { margin-left: 6.4rem; }
[class*="st-key-tn5_"] { margin-left: 8rem; }
[class*="st-key-tn6_"] { margin-left: 9.6rem; }
</style>
"""


def page_style() -> None:
    st.html(_STYLE)


def show_image(data: bytes | str | None, *, alt: str, caption: str | None = None, width: Any = "stretch") -> None:
    """A thumbnail (JPEG bytes), a remote image (URL) or a placeholder, with its alternative text."""
    if data is None:
        st.markdown(
            f"<div role='img' aria-label='{html.escape(alt, quote=True)} (no image)' "
            "style='height:160px;display:flex;align-items:center;justify-content:center;"
            "background:#f0f2f6;color:#45474f;border-radius:4px'>no image</div>",
            unsafe_allow_html=True,
        )
        return
    st.image(data, caption=caption, width=width, alt=alt)


def card(hit: Any, lib: Any, *, scored: bool, key: str, selected: Sequence[int] | None = None) -> None:
    """One result: thumbnail, scientific name in italics, rank, catalog number, institution,
    date, score, where the image comes from, the "Details" and "More like this" buttons, and (when
    ``selected`` is given) a box that selects it."""
    f = card_fields(hit, scored=scored)
    with st.container(border=True, width=CARD_WIDTH, key=f"{key}_card_{hit.id}"):
        show_image(lib.thumbnail(hit), alt=alt_text(hit))
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
        with st.container(horizontal=True, gap="small", vertical_alignment="center"):
            if selected is not None:
                box = f"{key}_sel_{hit.id}"
                st.session_state[box] = hit.id in selected
                st.checkbox(
                    "Select",
                    key=box,
                    on_change=change,
                    args=(BrowseState.with_selected, hit.id),
                    kwargs={"widget": box},
                )
            st.button(
                "Details",
                key=f"{key}_detail_{hit.id}",
                on_click=change,
                args=(BrowseState.with_detail, hit.id),
                type="tertiary",
            )
            st.button(
                "More like this",
                key=f"{key}_like_{hit.id}",
                on_click=change,
                args=(BrowseState.more_like, hit.id),
                kwargs={"sync": True},
                type="tertiary",
            )


def grid(hits: Sequence, lib: Any, *, scored: bool, key: str, selected: Sequence[int] | None = None) -> None:
    """Result cards of a fixed width, wrapping to the screen's width."""
    with st.container(horizontal=True, gap="small", key=f"grid_{key}"):
        for hit in hits:
            card(hit, lib, scored=scored, key=key, selected=selected)
