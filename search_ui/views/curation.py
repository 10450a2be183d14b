"""The curation page (Streamlit): a review queue per list, the specimen beside its neighbours and
beside examples of the suggested taxon, Accept / Reject / Skip, and the lists as CSV."""

from __future__ import annotations

import streamlit as st

from indexer.curate import KINDS, ListOptions
from indexer.store.schema import RANKS
from search_ui import ui
from search_ui.curation import KIND_LABELS, ReviewQueue
from search_ui.views import Context

__all__ = ["curation_page"]

ss = st.session_state


@st.cache_resource(show_spinner=False)
def _queue(path: str, _engine) -> ReviewQueue:
    return ReviewQueue(_engine)


def _skip(kind: str, image_id: int) -> None:
    ss.setdefault("cur_skipped", {}).setdefault(kind, []).append(image_id)


def _decide(queue: ReviewQueue, kind: str, image_id: int, decision: str, opts: ListOptions) -> None:
    try:
        queue.decide(kind, image_id, decision, by=ss.get("w_cur_by") or None, options=opts)
        ss["cur_notice"] = f"{decision.capitalize()}: image {image_id}."
    except Exception as exc:  # shown on the next run
        ss["cur_notice"] = f"Not recorded: {exc}"


def curation_page(ctx: Context) -> None:
    engine = ctx.engine
    queue = _queue(str(engine.collection.path), engine)
    st.subheader("Curation")
    about = queue.describe()
    if about is None:
        st.info(
            "This collection has no curation data yet. Compute it once (and again after builds) with  \n"
            f"`bioclip-index curate {engine.collection.path}`"
        )
        return
    st.caption(ui.md(about))
    if ss.get("cur_notice"):
        st.success(ss.pop("cur_notice"))
    c1, c2, c3 = st.columns([3, 1, 1])
    kind = c1.radio("Queue", KINDS, format_func=KIND_LABELS.get, horizontal=True, key="w_cur_kind") or KINDS[0]
    rank = c2.selectbox("Down to rank", RANKS, index=len(RANKS) - 1, key="w_cur_rank") or RANKS[-1]
    c3.text_input("Your name (for the record)", key="w_cur_by")
    opts = ListOptions(rank=rank)
    skipped = ss.get("cur_skipped", {}).get(kind, [])
    review = queue.next(kind, opts, skipped)
    if review is None:
        st.success("Nothing left in this queue." + (f" ({len(skipped)} skipped in this session)" if skipped else ""))
    else:
        _show(ctx, queue, kind, review, opts)
    d1, d2 = st.columns(2)
    d1.download_button(
        "Download this list (CSV)", queue.export(kind, opts), file_name=f"{kind}.csv", mime="text/csv", key="dl_plain"
    )
    if kind in ("misidentified", "unidentified"):
        d2.download_button(
            "Darwin Core identifications (CSV)",
            queue.export(kind, opts, dwc=True),
            file_name=f"{kind}-identifications.csv",
            mime="text/csv",
            key="dl_dwc",
        )


def _show(ctx: Context, queue: ReviewQueue, kind: str, review, opts: ListOptions) -> None:
    e = review.entry
    st.markdown(f"**{review.remaining:,} in the queue.** Image {e.id} · score {e.score:.3f}")
    if e.suggested:
        was = f"recorded as {ui.sci_name(e.label)} ({e.start_rank}); " if e.label else "no name recorded; "
        st.markdown(
            f"{was}suggested: {ui.sci_name(e.suggested)} ({e.rank}) · neighbour vote "
            f"{(e.neighbour_share or 0):.2f} · zero-shot {(e.zeroshot or 0):.2f}"
        )
        if e.alternatives:
            st.caption("Alternatives: " + ", ".join(f"{ui.md(n)} {p:.2f}" for n, p in e.alternatives))
    elif kind == "outliers":
        st.markdown(
            f"Nearest neighbour at cosine {e.detail.get('nearest_cosine', 0):.2f}, nearest label at "
            f"{e.detail.get('label_cosine', 0):.2f}: possibly blank, damaged or novel."
        )
    left, right = st.columns([2, 3])
    with left:
        st.markdown("**The specimen**" if len(review.specimen) == 1 else f"**The {len(review.specimen)} images**")
        for h in review.specimen[:6]:
            ui.show_image(ctx.media.thumbnail(h), alt=_caption(h), caption=_caption(h))
    with right:
        if review.neighbours:
            st.markdown("**Its nearest neighbours**")
            cols = st.columns(4)
            for i, (h, cos, name) in enumerate(review.neighbours):
                with cols[i % 4]:
                    ui.show_image(ctx.media.thumbnail(h), alt=_caption(h), caption=f"{name or 'unnamed'} · {cos:.2f}")
        if review.examples:
            st.markdown(f"**Examples of {ui.sci_name(e.suggested)}**")
            cols = st.columns(4)
            for i, h in enumerate(review.examples):
                with cols[i % 4]:
                    ui.show_image(ctx.media.thumbnail(h), alt=_caption(h), caption=_caption(h))
    b1, b2, b3, _ = st.columns([1, 1, 1, 4])
    b1.button(
        "Accept",
        key=f"cur_accept_{kind}_{e.id}",
        type="primary",
        on_click=_decide,
        args=(queue, kind, e.id, "accepted", opts),
    )
    b2.button("Reject", key=f"cur_reject_{kind}_{e.id}", on_click=_decide, args=(queue, kind, e.id, "rejected", opts))
    b3.button("Skip", key=f"cur_skip_{kind}_{e.id}", on_click=_skip, args=(kind, e.id))


def _caption(h) -> str:
    name = h.scientific_name or "unnamed"
    cat = h.get("catalogNumber")
    return f"{name}" + (f" · {cat}" if cat else "")
