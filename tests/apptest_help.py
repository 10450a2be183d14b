"""Helpers for Streamlit ``AppTest`` runs of the app (not tests themselves).

Also the fixtures of the app's page tests: ``coll`` (the small app collection, once per module),
``engine`` (a search engine on it) and ``ids`` (catalogNumber -> image id); import them by name.

The app opens its collection (and loads its model) in the background and shows a "loading" note
meanwhile, so a first ``at.run()`` may return before the page is there: :func:`settle` waits for
every loader and runs the script again when the first run was still loading.
"""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest
from test_app_fixtures import build_app_collection

from search_ui.loading import EngineLoader

TIMEOUT = 60  # the first run loads the model

_LOADING_NOTES = ("Opening the collection", "Loading the model", "still loading")


def ok(at: AppTest) -> None:
    """No exception was shown on the page."""
    assert not at.exception, [e.value for e in at.exception]


def loading_shown(at: AppTest) -> bool:
    """The page shows one of the app's loading notes."""
    return any(note in i.value for i in at.info for note in _LOADING_NOTES)


def settle(at: AppTest, timeout: float = TIMEOUT) -> AppTest:
    """``at`` once the collection and its model are loaded (run again if they were loading)."""
    if EngineLoader.wait_all(timeout) and loading_shown(at):
        at.run()
    ok(at)
    return at


@pytest.fixture(scope="module")
def coll(tmp_path_factory, tiny_model_dir):
    return build_app_collection(tmp_path_factory.mktemp("app"), tiny_model_dir)


@pytest.fixture(scope="module")
def engine(coll):
    from indexer.search.engine import SearchEngine

    return SearchEngine.open(coll.path, device="cpu")


@pytest.fixture(scope="module")
def ids(engine):
    """catalogNumber -> id"""
    return {h.metadata["catalogNumber"]: h.id for h in engine.get(range(12))}
