"""The collection page (Streamlit): model and revision, counts, the index and its measured recall,
failures by reason, images per rank, sources."""

from __future__ import annotations

import streamlit as st

from search_ui import ui
from search_ui.hit_fields import when
from search_ui.overview import collection_overview
from search_ui.views import Context

__all__ = ["collection_page"]


def collection_page(ctx: Context) -> None:
    """Model and revision, counts, index type and recall, failures by reason, images per rank."""
    engine = ctx.engine
    o = collection_overview(engine)
    st.subheader("About this collection")
    st.caption(ui.md(o["path"]))
    c = st.columns(4)
    c[0].metric("Images", f"{o['images']:,}")
    c[1].metric("Images that could not be read", f"{o['failures']:,}")
    c[2].metric("Images replaced or removed", f"{o['retired']:,}")
    c[3].metric("Last updated", when(o["updated"]) if o["updated"] else "never")
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
    target = f"{o['recall_target']:.2f}" if o["recall_target"] is not None else "not recorded"
    st.table(
        {
            "": [
                "type",
                "recall target (recall@10 against exact search)",
                "images not yet in the index (searched exactly)",
            ],
            "value": [str(o["index"]), target, f"{o['unindexed']:,}"],
        }
    )
    st.markdown("**Recall per query kind**")
    st.table(
        {
            "query kind": [r["kind"] for r in o["kinds"]],
            "recall@10": [r["recall"] for r in o["kinds"]],
            "search parameters": [r["params"] for r in o["kinds"]],
            "measured on": [r["queries"] for r in o["kinds"]],
            "note": [r["note"] for r in o["kinds"]],
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
        st.markdown("**Images that could not be read, by reason**")
        if o["failures_by_reason"]:
            st.table(
                {"reason": [r for r, _ in o["failures_by_reason"]], "images": [n for _, n in o["failures_by_reason"]]}
            )
        else:
            st.caption("No failures.")
        st.markdown("**Sources**")
        st.table({"source": [s for s, _ in o["sources"]], "images": [n for _, n in o["sources"]]})
    if o["failures"]:
        with st.expander(f"The images that could not be read ({o['failures']:,})"):
            rows = engine.failures()[:500]
            st.dataframe(
                {k: [str(r.get(k) or "") for r in rows] for k in ("location", "stage", "reason", "detail")},
                hide_index=True,
                width="stretch",
            )
    created = when(o["created"]) if o["created"] else "at an unknown date"
    st.caption(f"Created {created}; version {o['generation']} of its contents.")
