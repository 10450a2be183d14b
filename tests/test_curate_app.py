"""The Curation page, driven by Streamlit's AppTest over the curated test bed (tests/curatebed.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from apptest_help import ok  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from indexer.curate import Curation  # noqa: E402
from search_ui.loading import EngineLoader  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "search_ui" / "app.py"
pytestmark = pytest.mark.slow


@pytest.fixture
def collection(curated_bed, tmp_path):
    path = tmp_path / "c"
    shutil.copytree(curated_bed.path, path)
    return path


def _start(path, monkeypatch) -> AppTest:
    monkeypatch.setenv("BIOCLIP_SEARCH_COLLECTIONS", str(path))
    monkeypatch.setenv("BIOCLIP_SEARCH_DEVICE", "cpu")
    at = AppTest.from_file(str(APP), default_timeout=90)
    at.query_params["tab"] = "curation"
    at.run()
    # the collection and its model load in the background: run again once they are loaded
    if EngineLoader.wait_all(90) and not at.subheader:
        at.run()
    ok(at)
    return at


def _text(at: AppTest) -> str:
    return " ".join(m.value for m in at.markdown) + " " + " ".join(c.value for c in at.caption)


def _current_id(at: AppTest) -> int:
    line = next(m.value for m in at.markdown if "in the queue" in m.value)
    return int(line.split("Image ")[1].split(" ")[0])


def test_review_accept_reject_and_skip(collection, monkeypatch, curate_model):
    at = _start(collection, monkeypatch)
    assert "Curation" in [h.value for h in at.subheader]
    assert "Likely misidentified" in at.radio(key="w_cur_kind").options
    first = _current_id(at)
    text = _text(at)
    assert "suggested:" in text and "Its nearest neighbours" in text and "Examples of" in text
    at.text_input(key="w_cur_by").set_value("A. Curator").run()
    at.button(key=f"cur_accept_misidentified_{first}").click().run()
    assert not at.exception
    assert any("Accepted: image" in s.value for s in at.success)
    second = _current_id(at)
    assert second != first
    cur = Curation.open(collection, model=curate_model)
    d = cur.decisions.latest()[("misidentified", first)]
    assert d.decision == "accepted" and d.by == "A. Curator"
    at.button(key=f"cur_skip_misidentified_{second}").click().run()
    third = _current_id(at)
    assert third not in (first, second)
    at.button(key=f"cur_reject_misidentified_{third}").click().run()
    assert _current_id(at) not in (first, third)
    # another session still sees the skipped entry, never the decided ones
    other = _start(collection, monkeypatch)
    assert _current_id(other) == second
    # the other queues
    at.radio(key="w_cur_kind").set_value("duplicates").run()
    assert "The 2 images" in _text(at)
    at.radio(key="w_cur_kind").set_value("outliers").run()
    assert "possibly blank, damaged or novel" in _text(at)
    at.radio(key="w_cur_kind").set_value("unidentified").run()
    assert "no name recorded" in _text(at) or "recorded as" in _text(at)
    assert len(at.get("download_button")) == 2


def test_without_curation_data_the_page_says_how_to_compute_it(collection, monkeypatch):
    shutil.rmtree(collection / "curation")
    at = _start(collection, monkeypatch)
    assert any("bioclip-index curate" in i.value for i in at.info)
