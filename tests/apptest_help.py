"""Helpers for Streamlit ``AppTest`` runs of the app (not tests themselves).

The app opens its collection (and loads its model) in the background and shows a "loading" note
meanwhile, so a first ``at.run()`` may return before the page is there: :func:`settle` waits for
every loader and runs the script again when the first run was still loading.
"""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

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
