"""The app's views (Streamlit): each draws one page of the app from the session's state, with the
shared objects of its collection (:class:`Context`); the decisions are made in the plain-Python
modules of :mod:`search_ui`. (Not named ``pages``: Streamlit would list such a folder as pages of
its own.) A new page (curation, say) is a new module here, a tab in :data:`search_ui.state.TABS` and
an entry in ``search_ui/app.py``'s ``PAGES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Context"]


@dataclass(frozen=True)
class Context:
    """What a view draws with: the collection's engine, its media library (images and thumbnails),
    the sidebar's facet catalog and the zero-shot taxa predictor (one of each per process), the
    kept photos of photo searches, and where the background loading is (a
    :class:`search_ui.loading.LoadStatus`; None: everything is loaded)."""

    engine: Any
    media: Any
    catalog: Any
    predictor: Any
    photos: Any = None
    status: Any = None
