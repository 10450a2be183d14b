"""Shared links in the app: hostile text in the URL and the query is shown as text (never a link or
HTML), and a link to an image whose file changed says which image replaced it and shows that one.

Streamlit renders its text elements as GitHub-flavoured Markdown; here every text element of the
page is rendered with cmark-gfm (GitHub's own implementation, raw HTML let through) to see what a
browser would get.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_app_fixtures import build_app_collection, picture

pytest.importorskip("streamlit")
cmarkgfm = pytest.importorskip("cmarkgfm")
from apptest_help import settle  # noqa: E402
from cmarkgfm.cmark import Options  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from indexer.build import BuildOptions, build  # noqa: E402
from indexer.build.sources import FolderSource  # noqa: E402
from indexer.search.engine import SearchEngine  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "search_ui" / "app.py"
TIMEOUT = 60  # the first run loads the model

EVIL = "[x](https://evil.example)"
HOSTILE = f"{EVIL} <img src=x onerror=alert(1)> **loud** www.evil.example :red[red] $x^2$ mail@evil.example"


@pytest.fixture(scope="module")
def coll(tmp_path_factory, tiny_model_dir):
    """The app's test collection, then image 1's file rewritten with other pixels and built again."""
    c = build_app_collection(tmp_path_factory.mktemp("links"), tiny_model_dir, n=8)
    engine = SearchEngine.open(c.path, refresh_interval=None)
    by_file = {h.location: h.id for h in engine.browse(k=100).hits}
    old = by_file[str(c.image_path(1))]
    picture(99).save(c.image_path(1))
    build(
        c.path,
        [FolderSource(c.images, labels=c.labels)],
        model_name=c.model_source,
        device="cpu",
        options=BuildOptions(workers=0),
    )
    engine = SearchEngine.open(c.path, refresh_interval=None)
    new = {h.location: h.id for h in engine.browse(k=100).hits}[str(c.image_path(1))]
    assert new != old
    return c, old, new


@pytest.fixture
def app(coll, monkeypatch):
    c, _, _ = coll
    monkeypatch.setenv("BIOCLIP_SEARCH_COLLECTIONS", str(c.path))
    monkeypatch.setenv("BIOCLIP_SEARCH_DEVICE", "cpu")

    def start(query: dict) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
        at.query_params.update(query)
        at.run()
        first = _rendered(at)  # a link's problems are said on its first run (the collection may be loading)
        settle(at)  # the collection loads in the background: the page once it is there
        return at, first

    return start


def _rendered(at: AppTest) -> list[str]:
    """The HTML of every element Streamlit renders as Markdown (text, notices, labels)."""
    bodies = [e.value for kind in ("markdown", "caption", "info", "warning", "error", "success") for e in at.get(kind)]
    bodies += [e.value for kind in ("title", "header", "subheader") for e in at.get(kind)]
    bodies += [b.label for b in at.button]
    return [cmarkgfm.github_flavored_markdown_to_html(str(b), options=Options.CMARK_OPT_UNSAFE) for b in bodies]


def _assert_inert(html: list[str]) -> None:
    for h in html:
        hrefs = re.findall(r"<a [^>]*href=\"([^\"]*)\"", h)
        # The only links are the app's own (the share link: a query string of this page).
        assert all(u.startswith("?") and "://" not in u for u in hrefs), h
        assert not re.search(r"<(img|script|iframe)\b", h), h
        assert "<strong>loud</strong>" not in h, h


@pytest.mark.parametrize(
    "query",
    [
        {"page": EVIL},
        {"q": HOSTILE},
        {"country": HOSTILE, "collection": EVIL},
        {"like": HOSTILE, "detail": EVIL, "year": EVIL},
    ],
    ids=["page", "query", "filter-and-collection", "like-detail-year"],
)
def test_hostile_text_from_the_url_and_the_query_is_shown_as_text(app, query):
    at, first = app(query)
    html = first + _rendered(at)
    _assert_inert(html)
    shown = " ".join(html)
    assert "evil" in shown.replace("\u200b", ""), "the hostile text is not shown at all: the test would prove nothing"


def test_a_link_to_a_replaced_image_says_so_and_shows_the_new_one(app, coll):
    _, old, new = coll
    at, _ = app({"detail": str(old)})
    notes = [i.value for i in at.info]
    assert any(f"image {old} was replaced by {new}" in n and "changed" in n for n in notes), notes
    assert at.query_params["detail"] == str(new)
    assert at.button(key="detail_like")  # the detail view of the new image
    at, _ = app({"like": str(old)})
    assert any(f"image {old} was replaced by {new}" in i.value for i in at.info)
    assert any(c.value.startswith("Searching for: ") and str(new) in c.value for c in at.caption)
