"""The top of the search page (Streamlit): the search box with live taxon suggestions and "did you
mean" corrections, the photo upload, and the bar that shows what is searched (words, photo,
images, filters), each part with a button that removes it."""

from __future__ import annotations

from typing import Any

import streamlit as st

from search_ui import searching, ui, upload
from search_ui.hit_fields import alt_text
from search_ui.photo_cache import photo_key
from search_ui.session import bound, change, seed, state
from search_ui.state import BrowseState

__all__ = ["search_box", "suggestions", "upload_box", "query_bar", "pending_photo", "UPLOAD_BYTES"]

ss = st.session_state
#: Session key of the last uploaded photo's (key, name, bytes), until it is embedded and kept.
UPLOAD_BYTES = "_upload"


def search_box(s: BrowseState) -> None:
    """The search box; it searches as the user pauses typing (works while the collection opens)."""
    seed("w_q", s.q)
    st.text_input(
        "Search",
        **bound("w_q", BrowseState.search_text),
        type="search",
        live="500ms",
        placeholder="A taxon at any rank (Corvidae, Corvus corax, common raven) or any words",
        help="Searches as you type. A name the collection knows is searched as that taxon; anything else as free text.",
    )


def suggestions(engine: Any, s: BrowseState) -> None:
    """The collection's taxa that match what is typed (or, before anything is typed, its largest),
    and for a name it does not know, the names close to it: each a button that searches it."""
    if s.mode != "text":
        return
    fixes = searching.corrections(engine, s.q)
    if fixes:
        with st.container(horizontal=True, gap="small", vertical_alignment="center", key="fixes"):
            st.markdown(f"No taxon named *{ui.md(s.q.strip())}* here. Did you mean")
            for i, m in enumerate(fixes):
                st.button(
                    ui.md(m.name),
                    key=f"fix_{i}",
                    on_click=change,
                    args=(BrowseState.search_text, m.name),
                    kwargs={"sync": True},
                    help=ui.md(searching.describe_taxon(m)),
                )
    if s.q.strip():
        matches = searching.suggest_taxa(engine, s.q, limit=6)
        title = "Taxa in this collection:"
    else:
        matches = [m for r in ("species", "genus", "family") for m in engine.taxonomy.taxa(r)[:6]][:6]
        title = "Try a taxon from this collection:"
    if not matches:
        return
    st.caption(title)
    with st.container(horizontal=True, gap="small", key="suggestions"):
        for i, m in enumerate(matches):
            st.button(
                ui.md(searching.describe_taxon(m)),
                key=f"sugg_{i}",
                on_click=change,
                args=(BrowseState.search_text, m.name),
                kwargs={"sync": True},
            )


def _upload_key() -> str:
    return f"w_upload_{ss.get('_upload_gen', 0)}"


def _on_upload(key: str) -> None:
    f = ss.get(key)
    if f is None:  # the user removed the file in the uploader
        if state().mode == "image":
            change(BrowseState.without_query, sync=True)
        return
    data = f.getvalue()
    digest = photo_key(data)
    ss[UPLOAD_BYTES] = (digest, f.name, data)
    change(BrowseState.with_photo, digest, sync=True)


def upload_box(s: BrowseState) -> None:
    """The photo upload. When the search is no longer by the uploaded photo (words typed, the photo
    removed from the bar), the uploader is emptied, so nothing on the page lingers unused."""
    key = _upload_key()
    pending = ss.get(UPLOAD_BYTES)
    if ss.get(key) is not None and not (s.mode == "image" and pending and pending[0] == s.photo):
        ss["_upload_gen"] = ss.get("_upload_gen", 0) + 1
        key = _upload_key()
    st.file_uploader(
        "…or search with a photo",
        type=list(upload.UPLOAD_TYPES),
        key=key,
        on_change=_on_upload,
        args=(key,),
        help=(
            f"JPEG, PNG, TIFF or WebP, up to {upload.MAX_UPLOAD_BYTES // (1024 * 1024)} MB. Its search vector and "
            "a small preview are kept in the collection's cache, so that the page's link reopens the search."
        ),
    )


def pending_photo(s: BrowseState) -> tuple[str, bytes] | None:
    """(name, bytes) of the photo this session uploaded for ``s.photo``, when it has not been kept yet."""
    pending = ss.get(UPLOAD_BYTES)
    if pending and s.mode == "image" and pending[0] == s.photo:
        return pending[1], pending[2]
    return None


def query_bar(ctx: Any, s: BrowseState, photo: Any = None) -> None:
    """What is searched, each part removable: the words, the photo (with its preview), each
    indexed image searched like (with its thumbnail and name), each filter; and "Clear filters"."""
    parts = s.query_parts(photo.name if photo is not None else None)
    chips = s.filter_chips()
    with st.container(horizontal=True, gap="small", vertical_alignment="center", key="querybar"):
        st.markdown("**Searching:**")
        if not parts:
            st.markdown("all images" + (" where" if chips else ""))
        for part in parts:
            _part(ctx, part, photo)
        for i, chip in enumerate(chips):
            st.button(
                f"✕ {ui.md(chip.text)}",
                key=f"chip_{i}",
                on_click=change,
                args=(BrowseState.without_filter, chip.param, chip.value),
                kwargs={"sync": True},
                help="Remove this filter",
            )
        if chips:
            st.button(
                "Clear filters",
                key="chip_clear",
                on_click=change,
                args=(BrowseState.without_filters,),
                kwargs={"sync": True},
                type="tertiary",
            )


def _part(ctx: Any, part: Any, photo: Any) -> None:
    key = f"part_{part.kind}_{part.image_id if part.image_id is not None else 0}"
    with st.container(horizontal=True, gap="small", vertical_alignment="center", border=True, width="content"):
        if part.kind == "photo" and photo is not None and photo.preview:
            st.image(photo.preview, width=56, alt=f"The photo searched with: {photo.name}")
            label = f"your photo {ui.md(photo.name)}"
        elif part.kind == "image":
            found = ctx.engine.get([part.image_id])
            if found:
                hit = found[0]
                ui.show_image(ctx.media.thumbnail(hit), alt=alt_text(hit), width=56)
                name = ui.sci_name(hit.scientific_name) if hit.scientific_name else ""
                label = f"image {part.image_id}" + (f" · {name}" if name else "")
            else:
                label = f"image {part.image_id}"
        elif part.kind == "words":
            label = f"words “{ui.md(part.text)}”"
        else:
            label = ui.md(part.text)
        st.markdown(label)
        st.button(
            "✕",
            key=key,
            on_click=change,
            args=(BrowseState.without_part, part.kind, part.image_id),
            kwargs={"sync": True},
            help=f"Remove {part.text} from the search",
            type="tertiary",
        )
