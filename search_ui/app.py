"""The bioclip-search app (Streamlit): the entry script. Thin: it opens the shared objects, follows
the URL, and draws the page the session is on.

Run with ``bioclip-app COLLECTION...`` (which calls ``streamlit run search_ui/app.py --
COLLECTION... --device D``), or set ``BIOCLIP_SEARCH_COLLECTIONS`` (``os.pathsep``-separated) and
``BIOCLIP_SEARCH_DEVICE``. Every decision lives in the plain-Python modules of ``search_ui`` (state,
searching, hits, export, ...) and in the engine; the pages are in ``search_ui/views/``.

State: one ``BrowseState`` per session is the truth (:mod:`search_ui.session`); widgets mirror it
and their callbacks replace it; the page URL is written from it on every run, and read into it when
the address changed outside the page, so a shared URL runs the same search.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace

import streamlit as st

from bioclip.errors import BioclipError
from indexer.errors import IndexerError
from indexer.media.library import MediaLibrary
from search_ui import ui
from search_ui.args import collection_labels, parse_app_args
from search_ui.loading import EngineLoader
from search_ui.photo_cache import PhotoCache
from search_ui.session import bound, change, follow_url, publish_url, seed, set_state, state
from search_ui.sidebar import FacetCatalog
from search_ui.state import TABS, BrowseState
from search_ui.taxa import TaxaPredictor
from search_ui.text import md
from search_ui.views import Context
from search_ui.views.collection import collection_page
from search_ui.views.curation import curation_page
from search_ui.views.loading import loading_status
from search_ui.views.search import search_header, search_page

log = logging.getLogger("search_ui")

#: The view of each tab (search_ui.state.TABS).
PAGES = {"search": search_page, "collection": collection_page, "curation": curation_page}

st.set_page_config(page_title="bioclip-search", page_icon=":mag:", layout="wide")
# Never show a stack trace to a visitor (also set in search_ui/.streamlit/config.toml).
st.set_option("client.showErrorDetails", "none")


# -- shared, per-process objects (one per collection and device) ----------------------------


@st.cache_resource(show_spinner=False)
def loader(path: str, device: str) -> EngineLoader:
    """The collection's engine, opened in the background with its model (the page draws at once;
    ``main`` starts the loader once the first page is drawn, so that nothing competes with that)."""
    return EngineLoader(path, device)


@st.cache_resource(show_spinner=False)
def media_library(path: str, device: str) -> MediaLibrary:
    return MediaLibrary.for_engine(loader(path, device).engine)


@st.cache_resource(show_spinner=False)
def facet_catalog(path: str, device: str) -> FacetCatalog:
    return FacetCatalog(loader(path, device).engine)


@st.cache_resource(show_spinner=False)
def taxa_predictor(path: str, device: str) -> TaxaPredictor:
    return TaxaPredictor(loader(path, device).engine)


@st.cache_resource(show_spinner=False)
def photo_cache(path: str) -> PhotoCache:
    return PhotoCache.for_collection(path)


# -- the page ----------------------------------------------------------------------------------


def main() -> None:
    args = parse_app_args(sys.argv[1:], os.environ)
    if not args.collections:
        st.error("No collection to search. Start the app with: bioclip-app COLLECTION")
        return
    for note in follow_url():
        st.warning(f"The link had a problem: {md(note)}")

    paths = list(args.collections)
    labels = collection_labels(paths)
    by_label = {v: k for k, v in labels.items()}
    s = state()
    if s.collection and s.collection not in by_label:
        st.warning(f"No collection named {md(repr(s.collection))} here; showing {md(labels[paths[0]])}.")
        s = replace(s, collection=None)
        set_state(s)
    path = by_label[s.collection] if s.collection else paths[0]

    with st.sidebar:
        st.title("bioclip-search")
        if len(paths) > 1:
            seed("w_collection", labels[path])
            st.selectbox(
                "Collection",
                [labels[p] for p in paths],
                key="w_collection",
                on_change=_pick_collection,
                args=(labels[paths[0]],),
            )
        seed("w_tab", s.tab)
        st.radio(
            "Page",
            TABS,
            **bound("w_tab", BrowseState.with_tab),
            format_func=str.capitalize,
            horizontal=True,
        )

    ui.page_style()
    load = loader(path, args.device)
    status = load.status()
    # The loading status polls the loader; it is drawn here (top of the page) but started last, so
    # that its timer never cuts short the drawing of the page.
    status_slot = st.container()
    if status.phase == "failed":
        st.error(md(f"Cannot open the collection {path}: {status.error}"))
        loader.clear(path, args.device)  # the next visit tries again (the folder may be there by then)
        return
    if not status.engine_ready:  # the search box works already; the rest waits for the collection
        if state().tab == "search":
            search_header(None, state())
        with status_slot:
            loading_status(load, status)
        publish_url()
        load.start()
        return
    engine = load.engine
    context = Context(
        engine,
        media_library(path, args.device),
        facet_catalog(path, args.device),
        taxa_predictor(path, args.device),
        photos=photo_cache(path),
        status=status,
    )
    PAGES[state().tab](context)
    with status_slot:
        loading_status(load, status)
    publish_url()


def _pick_collection(first_label: str) -> None:
    label = st.session_state["w_collection"]
    change(BrowseState.for_collection, None if label == first_label else label, sync=True)


def run() -> None:
    try:
        main()
    except (IndexerError, BioclipError) as exc:
        st.error(md(exc))
    except Exception:  # the visitor gets a short message; the details go to the server log
        log.exception("unexpected error in the search page")
        st.error("Something went wrong on our side (the details are in the server log). Try another search.")


run()
