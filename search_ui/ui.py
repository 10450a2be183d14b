"""Drawing helpers of the search page: result cards, the detail view, the collection page.

Streamlit only; every decision comes from ``indexer.browse`` / ``indexer.media``. Actions are
reported through the callbacks passed in (``on_like(id)``, ``on_detail(id)``), which the page
script turns into a new ``BrowseState``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st

from indexer import browse

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|<>~$])")


def md(text: Any) -> str:
    """Escape text from the collection for Markdown (no links, emphasis or HTML sneak in)."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def sci_name(name: str) -> str:
    """A scientific name for Markdown: the name in italics, its authorship not."""
    canonical, author = browse.split_name(name)
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


def card(hit, lib, *, scored: bool, key: str, on_like: Callable, on_detail: Callable) -> None:
    """One result: thumbnail, scientific name in italics, rank, catalog number, institution,
    date, score, and the "Details" and "More like this" buttons."""
    f = browse.card_fields(hit, scored=scored)
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
        c1.button("Details", key=f"{key}_detail_{hit.id}", on_click=on_detail, args=(hit.id,), type="tertiary")
        c2.button("More like this", key=f"{key}_like_{hit.id}", on_click=on_like, args=(hit.id,), type="tertiary")


def grid(
    hits: Sequence, lib, *, scored: bool, key: str, on_like: Callable, on_detail: Callable, columns: int = 4
) -> None:
    for start in range(0, len(hits), columns):
        cols = st.columns(columns)
        for col, hit in zip(cols, hits[start : start + columns]):
            with col:
                card(hit, lib, scored=scored, key=key, on_like=on_like, on_detail=on_detail)


def detail(engine, hit, lib, *, on_like: Callable, on_detail: Callable, on_back: Callable) -> None:
    """The detail view of one image."""
    st.button("← Back to the results", key="detail_back", on_click=on_back)
    left, right = st.columns([3, 2])
    with left:
        show_image(lib.detail_image(hit))
    with right:
        name = hit.scientific_name
        st.subheader(sci_name(name) if name else f"Image {hit.id}")
        if hit.metadata.get("vernacularName"):
            st.markdown(md(hit.metadata["vernacularName"]))
        facts = browse.key_facts(hit)
        if facts:
            st.markdown("  \n".join(f"**{md(line)}**" if i == 0 else md(line) for i, line in enumerate(facts)))
        lic = hit.metadata.get("license")
        holder = hit.metadata.get("rightsHolder")
        st.markdown(
            f"**License:** {md(lic) if lic else 'not recorded'}  \n**Rights holder:** {md(holder) if holder else 'not recorded'}"
        )
        url = browse.source_record_url(hit)
        if url:
            st.link_button("Open the source record", url)
        elif hit.metadata.get("occurrenceID"):
            st.caption(f"occurrenceID: {md(hit.metadata['occurrenceID'])}")
        st.button("More like this", key="detail_like", on_click=on_like, args=(hit.id,))
    rows = browse.detail_fields(hit)
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
        grid(others, lib, scored=False, key="rec", on_like=on_like, on_detail=on_detail, columns=6)
    similar = engine.similar(hit.id, k=8).hits
    if similar:
        st.markdown("**Similar images** in the whole collection")
        grid(similar, lib, scored=True, key="sim", on_like=on_like, on_detail=on_detail, columns=4)


def collection_page(engine) -> None:
    """Model and revision, counts, index type and recall, failures by reason, images per rank."""
    o = browse.collection_overview(engine)
    st.subheader("About this collection")
    st.caption(md(o["path"]))
    c = st.columns(4)
    c[0].metric("Images", f"{o['images']:,}")
    c[1].metric("Failures", f"{o['failures']:,}")
    c[2].metric("Retired", f"{o['retired']:,}")
    c[3].metric("Generation", o["generation"])
    st.markdown("**Model**")
    st.table(
        {
            "": ["model", "source", "revision", "architecture", "dimension", "preprocessing"],
            "value": [
                str(o[k] or "")
                for k in ("model", "model_source", "revision", "architecture", "dimension", "preprocess")
            ],
        }
    )
    st.markdown("**Index**")
    recall = f"{o['recall']:.3f}" if o["recall"] is not None else "not measured"
    if o["recall"] is not None and o["recall_target"] is not None:
        recall += f" (target {o['recall_target']:.2f})"
    st.table(
        {
            "": ["type", "measured recall", "search parameters", "images not yet in the index (searched exactly)"],
            "value": [str(o["index"]), recall, o["index_params"] or "none", f"{o['unindexed']:,}"],
        }
    )
    left, right = st.columns(2)
    with left:
        st.markdown("**Images per rank**")
        st.table(
            {
                "rank": [r[0] for r in o["ranks"]],
                "images": [r[1] for r in o["ranks"]],
                "taxa": [r[2] for r in o["ranks"]],
            }
        )
    with right:
        st.markdown("**Failures by reason**")
        if o["failures_by_reason"]:
            st.table(
                {"reason": [r for r, _ in o["failures_by_reason"]], "images": [n for _, n in o["failures_by_reason"]]}
            )
        else:
            st.caption("No failures.")
        st.markdown("**Sources**")
        st.table({"source": [s for s, _ in o["sources"]], "images": [n for _, n in o["sources"]]})
    if o["failures"]:
        with st.expander(f"The failures ({o['failures']:,})"):
            rows = engine.failures()[:500]
            st.dataframe(
                {k: [str(r.get(k) or "") for r in rows] for k in ("location", "stage", "reason", "detail")},
                hide_index=True,
                width="stretch",
            )
    st.caption(f"Created {o['created'] or '?'}; last published {o['updated'] or '?'}.")
