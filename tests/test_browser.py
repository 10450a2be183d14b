"""End to end in a real headless Chromium: `streamlit run search_ui/app.py` on a small collection.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``)
and selenium; skips with the reason when they are absent. Screenshots go to
``artifacts/browser/`` (or ``$BIOCLIP_BROWSER_ARTIFACTS``); their paths are printed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_app_fixtures import build_app_collection

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "search_ui" / "app.py"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT = 60


def _skip_reason() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        return f"needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def artifacts() -> Path:
    out = Path(os.environ.get("BIOCLIP_BROWSER_ARTIFACTS") or ROOT / "artifacts" / "browser")
    out.mkdir(parents=True, exist_ok=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("browser")
    coll = build_app_collection(base, tiny_model_dir)
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", BIOCLIP_SEARCH_THREADS="1")
    env.pop("BIOCLIP_SEARCH_COLLECTIONS", None)  # the collection comes as bioclip-app passes it
    env.pop("BIOCLIP_SEARCH_DEVICE", None)
    log = open(base / "streamlit.log", "wb")  # noqa: SIM115 - the server writes to it until the fixture ends
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--",
        str(coll.path),
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(cmd, cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT
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
        yield url, coll
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

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(WAIT)
    try:
        yield drv
    finally:
        drv.quit()


def wait_for_text(drv, text: str, timeout: float = WAIT) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(drv, timeout, poll_frequency=0.2).until(lambda d: text in d.find_element("tag name", "body").text)


def wait_idle(drv, timeout: float = WAIT) -> None:
    """Until Streamlit has finished the current run (its status widget is gone)."""
    from selenium.webdriver.support.ui import WebDriverWait

    time.sleep(0.3)
    WebDriverWait(drv, timeout, poll_frequency=0.2).until(
        lambda d: not d.find_elements("css selector", '[data-testid="stStatusWidget"]')
    )


def first_card_catalog(drv) -> str:
    """Catalog number in the first result card (cards come in reading order)."""
    for el in drv.find_elements("css selector", '[data-testid="stCaptionContainer"]'):
        text = el.text
        if "cat. MUS-" in text:
            return "MUS-" + text.split("cat. MUS-", 1)[1][:3]
    raise AssertionError("no result card on the page")


def shot(drv, artifacts: Path, name: str) -> None:
    path = artifacts / f"{name}.png"
    drv.save_screenshot(str(path))
    print(f"screenshot: {path}")


def test_search_upload_filter_and_more_like_this_in_chromium(server, driver, artifacts):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from indexer.search import SearchEngine
    from search_ui.searching import run_search
    from search_ui.state import BrowseState

    url, coll = server
    engine = SearchEngine.open(coll.path, device="cpu")
    drv = driver
    try:
        drv.get(url)
        wait_for_text(drv, "Searching for: all images")
        wait_idle(drv)
        shot(drv, artifacts, "01-start")

        # a text query
        box = drv.find_element(By.CSS_SELECTOR, 'input[aria-label="Search"]')
        box.send_keys("Corvidae", Keys.ENTER)
        wait_for_text(drv, "Searching for: family Corvidae")
        wait_idle(drv)
        assert "q=Corvidae" in drv.current_url
        shot(drv, artifacts, "02-text-query")

        # an upload query: the same picture comes back first
        upload = drv.find_element(By.CSS_SELECTOR, 'input[type="file"]')
        upload.send_keys(str(coll.image_path(5)))
        wait_for_text(drv, "Searching for: images similar to the uploaded picture img_05.png")
        wait_for_text(drv, "Most likely taxa")
        wait_idle(drv)
        assert first_card_catalog(drv) == "MUS-005"
        shot(drv, artifacts, "03-upload-query")

        # a filter in the sidebar
        country = drv.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"] input[aria-label*="Country"]')
        country.click()
        country.send_keys("Norway")
        time.sleep(0.5)
        country.send_keys(Keys.ENTER)
        wait_for_text(drv, "4 images pass the filters")
        wait_idle(drv)
        assert "country=Norway" in drv.current_url
        state = BrowseState().with_values("country", ["Norway"]).with_upload()
        expected = run_search(engine, state, image_vector=engine.embed_image(coll.image_path(5))).hits[0]
        assert first_card_catalog(drv) == expected.metadata["catalogNumber"]
        shot(drv, artifacts, "04-filter")

        # more like this on the first result
        first = expected.id
        buttons = [
            b
            for b in drv.find_elements(By.CSS_SELECTOR, '[data-testid="stButton"] button')
            if b.text == "More like this"
        ]
        buttons[0].click()
        wait_for_text(drv, f"Searching for: images similar to image {first}")
        wait_idle(drv)
        want = engine.similar(first, k=1, filters=BrowseState().with_values("country", ["Norway"]).to_filter()).hits[0]
        assert first_card_catalog(drv) == want.metadata["catalogNumber"]
        assert f"like={first}" in drv.current_url and "country=Norway" in drv.current_url
        shot(drv, artifacts, "05-more-like-this")

        # the URL reopens the same search in a new page load
        drv.get(drv.current_url)
        wait_for_text(drv, f"Searching for: images similar to image {first}")
        wait_idle(drv)
        assert first_card_catalog(drv) == want.metadata["catalogNumber"]
        assert "Traceback" not in drv.find_element(By.TAG_NAME, "body").text

        # the detail view of that result, and the collection page
        [b for b in drv.find_elements(By.CSS_SELECTOR, '[data-testid="stButton"] button') if b.text == "Details"][
            0
        ].click()
        wait_for_text(drv, "Rights holder")
        wait_for_text(drv, "Similar images")
        wait_idle(drv)
        assert f"detail={want.id}" in drv.current_url
        shot(drv, artifacts, "06-detail")
        drv.find_element(By.XPATH, '//*[@data-testid="stSidebar"]//label[.//p[text()="Collection"]]').click()
        wait_for_text(drv, "About this collection")
        wait_for_text(drv, "not-an-image")
        shot(drv, artifacts, "07-collection-page")

        # the browser's Back button walks back through the searches: the detail view, then the results
        drv.back()
        wait_for_text(drv, "Rights holder")
        wait_idle(drv)
        assert "tab=collection" not in drv.current_url and f"detail={want.id}" in drv.current_url
        assert "About this collection" not in drv.find_element(By.TAG_NAME, "body").text
        drv.back()
        wait_for_text(drv, f"Searching for: images similar to image {first}")
        wait_idle(drv)
        assert "detail=" not in drv.current_url and "Rights holder" not in drv.find_element(By.TAG_NAME, "body").text
        drv.forward()
        wait_for_text(drv, "Rights holder")
        wait_idle(drv)
        shot(drv, artifacts, "08-back-forward")
    except Exception:
        shot(drv, artifacts, "failure")
        raise
