"""The Curation page end to end in a real headless Chromium: review a suggestion, see it leave the
queue. Screenshots go to ``artifacts/browser/`` (or ``$BIOCLIP_BROWSER_ARTIFACTS``)."""

from __future__ import annotations

import os

import pytest
from browserhelp import make_driver, skip_reason, streamlit_server
from test_browser import APP, WAIT, shot, wait_for_text, wait_idle
from test_browser import artifacts as artifacts  # noqa: F401 (the same screenshot folder fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory, curate_model):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    from curatebed import build_bed

    from indexer.curate import curate

    base = tmp_path_factory.mktemp("curate-browser")
    bed = build_bed(base, curate_model, pictures=True)
    curate(bed.path, model=curate_model)
    env = dict(os.environ, HF_HUB_OFFLINE="1", BIOCLIP_SEARCH_THREADS="1")
    env.pop("BIOCLIP_SEARCH_COLLECTIONS", None)
    with streamlit_server(APP, [str(bed.path), "--device", "cpu"], cwd=base, env=env, timeout=WAIT * 2) as url:
        yield url, bed


@pytest.fixture(scope="module")
def driver(server, tmp_path_factory):
    drv = make_driver(tmp_path_factory.mktemp("chromium-profile"), window="1400,1400", page_load_timeout=WAIT)
    try:
        yield drv
    finally:
        drv.quit()


def _current(drv) -> int:
    text = drv.find_element("tag name", "body").text
    return int(text.split("in the queue.")[1].split("Image ")[1].split(" ")[0])


def test_review_a_suggestion_in_chromium(server, driver, artifacts):
    from selenium.webdriver.common.by import By

    from indexer.curate import Curation

    url, bed = server
    drv = driver
    drv.get(f"{url}/?tab=curation")
    wait_for_text(drv, "in the queue.", timeout=WAIT * 2)
    wait_idle(drv)
    first = _current(drv)
    body = drv.find_element("tag name", "body").text
    assert "suggested:" in body and "Its nearest neighbours" in body
    shot(drv, artifacts, "curation-01-queue")
    accept = next(b for b in drv.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Accept")
    accept.click()
    wait_for_text(drv, f"Accepted: image {first}.")
    wait_idle(drv)
    assert _current(drv) != first
    shot(drv, artifacts, "curation-02-accepted")
    d = Curation.open(bed.path).decisions.latest()[("misidentified", first)]
    assert d.decision == "accepted"
    # a reload: the accepted entry stays out of the queue
    drv.get(f"{url}/?tab=curation")
    wait_for_text(drv, "in the queue.", timeout=WAIT * 2)
    assert _current(drv) != first
