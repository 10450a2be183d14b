"""The Curation page end to end in a real headless Chromium: review a suggestion, see it leave the
queue. Screenshots go to ``artifacts/browser/`` (or ``$BIOCLIP_BROWSER_ARTIFACTS``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest
from test_browser import APP, WAIT, _skip_reason, free_port, shot, wait_for_text, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def artifacts():
    from pathlib import Path

    from test_browser import ROOT

    out = Path(os.environ.get("BIOCLIP_BROWSER_ARTIFACTS") or ROOT / "artifacts" / "browser")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory, curate_model):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from curatebed import build_bed

    from indexer.curate import curate

    base = tmp_path_factory.mktemp("curate-browser")
    bed = build_bed(base, curate_model, pictures=True)
    curate(bed.path, model=curate_model)
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", BIOCLIP_SEARCH_THREADS="1")
    env.pop("BIOCLIP_SEARCH_COLLECTIONS", None)
    log = open(base / "streamlit.log", "wb")  # noqa: SIM115 - written until the fixture ends
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port), "--server.address",
        "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none", "--", str(bed.path), "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT * 2
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"streamlit exited with {proc.returncode}: {(base / 'streamlit.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                    if resp.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("streamlit did not come up in time")
            time.sleep(0.3)
        yield url, bed
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def driver(server, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from test_browser import CHROMEDRIVER, CHROMIUM

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        "--window-size=1400,1400", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):  # fmt: skip
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(WAIT)
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
