"""One browser session's state, kept in Streamlit's session state: the :class:`BrowseState`, the
page URL that mirrors it, per-session memos, and the one callback every widget and button uses.

The state is the truth: widgets mirror it, and their callbacks replace it through a transition of
:class:`~search_ui.state.BrowseState`; the URL is written from it at the end of every run and read
back into it when it changed outside the page (a new session, Back and Forward, a pasted link).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import streamlit as st

from search_ui.state import BrowseState

__all__ = ["state", "set_state", "change", "bound", "seed", "memo", "follow_url", "publish_url", "sync_widgets"]

T = TypeVar("T")
ss = st.session_state


def state() -> BrowseState:
    return ss["_state"]


def set_state(new: BrowseState) -> None:
    ss["_state"] = new


def sync_widgets(s: BrowseState) -> None:
    """Make the widgets show ``s`` (where the state changed other than by the widget itself)."""
    ss.update(s.widget_values())
    ss.pop("w_year", None)  # re-seeded from the state with the collection's range


def change(transition: Callable[..., BrowseState], *args: Any, widget: str | None = None, sync: bool = False) -> None:
    """The callback of every widget and button: the state becomes ``transition(state, *args)``,
    with the widget's new value as the last argument when ``widget`` names it; ``sync`` makes every
    widget show the new state (for changes a widget did not make itself)."""
    values = (*args, ss.get(widget)) if widget is not None else args
    new = transition(state(), *values)
    set_state(new)
    if sync:
        sync_widgets(new)


def bound(key: str, transition: Callable[..., BrowseState], *args: Any) -> dict[str, Any]:
    """The keyword arguments that tie a widget to the state: its ``key``, and the callback that makes
    the state ``transition(state, *args, the widget's new value)`` when the widget changes."""
    return {"key": key, "on_change": change, "args": (transition, *args), "kwargs": {"widget": key}}


def seed(key: str, value: Any) -> None:
    """A widget's first value in this session (later runs keep what the widget holds)."""
    if key not in ss:
        ss[key] = value


def memo(name: str, key: Hashable, make: Callable[[], T]) -> T:
    """What ``make()`` gave for ``key`` in this session, made again only when ``key`` changes."""
    cached = ss.get(f"_memo_{name}")
    if cached is not None and cached[0] == key:
        return cached[1]
    value = make()
    ss[f"_memo_{name}"] = (key, value)
    return value


def _url_params() -> dict[str, list[str]]:
    return {k: st.query_params.get_all(k) for k in st.query_params}


def follow_url() -> list[str]:
    """Read the URL into the state when the session is new or the address changed outside the page;
    returns what could not be used in it (to show once)."""
    params = _url_params()
    if "_state" in ss and params == ss.get("_url"):
        return []
    first, notices = BrowseState.from_params(params)
    set_state(first)
    sync_widgets(first)
    ss["_url"] = params
    return notices


def publish_url() -> None:
    """Put the state in the page URL (only when it changed, so each step is one entry in the
    browser's history), and remember it: an address that differs on the next run was changed by
    the browser and is read back into the state."""
    want = state().to_params()
    if _url_params() != want:
        st.query_params.from_dict(want)
    ss["_url"] = _url_params()
