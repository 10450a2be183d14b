"""The page while the collection opens and the model loads (Streamlit): the search box works at
once, and a status line says what the app is waiting for, updating itself (a fragment that
polls the background loader, and reruns the page once it is ready)."""

from __future__ import annotations

import streamlit as st

from search_ui.loading import LoadStatus

__all__ = ["loading_status", "wait_for_model"]

ss = st.session_state


def loading_status(loader, drawn: LoadStatus) -> None:
    """A status line that follows ``loader`` every second until it is done. ``drawn``: the
    status the page was drawn with; the whole page is drawn again when the loader got further
    (the collection opened, the model loaded), so that what waited for it appears."""
    if drawn.phase in ("ready", "failed"):
        return

    @st.fragment(run_every=1.0)  # not faster: each tick takes the GIL from the loading thread
    def _status() -> None:
        now = loader.status()
        if now.phase != drawn.phase:
            st.rerun()
        with st.container(key="load_state"):
            st.info(now.describe(), icon=":material/hourglass_top:")

    _status()


def wait_for_model(status: LoadStatus) -> None:
    """What a search that needs the model says while the model loads (the page reruns by itself)."""
    st.info(
        "This search needs the model, which is still loading: it runs as soon as the model is ready "
        "(the line above says how long it has taken so far).",
        icon=":material/hourglass_top:",
    )
