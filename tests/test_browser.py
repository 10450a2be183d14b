"""End to end in a real headless Chromium: `streamlit run search_ui/app.py` on a small collection.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``)
and selenium; skips with the reason when they are absent. Screenshots go to
``artifacts/browser/`` (or ``$BIOCLIP_BROWSER_ARTIFACTS``); their paths are printed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from browserhelp import make_driver, skip_reason, streamlit_server
from test_app_fixtures import build_app_collection

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "search_ui" / "app.py"
WAIT = 60
#: The first search that needs the model waits for it to load (minutes on a loaded 2-core machine).
MODEL_WAIT = 600


@pytest.fixture(scope="module")
def artifacts() -> Path:
    out = Path(os.environ.get("BIOCLIP_BROWSER_ARTIFACTS") or ROOT / "artifacts" / "browser")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _empty_collection(path: Path, model_source: str) -> Path:
    from bioclip import load_model
    from indexer.store import Collection

    model = load_model(model_source, device="cpu")
    Collection.create(path, model.describe(), dimension=model.dimension)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("browser")
    coll = build_app_collection(base, tiny_model_dir)
    empty = _empty_collection(base / "empty" / "empty.coll", coll.model_source)
    env = dict(os.environ, HF_HUB_OFFLINE="1", BIOCLIP_SEARCH_THREADS="1")
    env.pop("BIOCLIP_SEARCH_COLLECTIONS", None)  # the collection comes as bioclip-app passes it
    env.pop("BIOCLIP_SEARCH_DEVICE", None)
    # a second collection, empty: one server for every page the tests look at
    app_args = [str(coll.path), str(empty), "--device", "cpu"]
    with streamlit_server(APP, app_args, cwd=base, env=env, timeout=WAIT) as url:
        yield url, coll


@pytest.fixture(scope="module")
def driver(server, tmp_path_factory):
    drv = make_driver(tmp_path_factory.mktemp("chromium-profile"), log_requests=True, page_load_timeout=WAIT)
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
        wait_for_text(drv, "Searching for: family Corvidae", MODEL_WAIT)
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
        state = BrowseState().with_values("country", ["Norway"]).with_photo("0" * 32)
        expected = run_search(engine, state, image_vector=engine.embed_image(coll.image_path(5))).hits[0]
        assert first_card_catalog(drv) == expected.metadata["catalogNumber"]
        shot(drv, artifacts, "04-filter")

        # more like this on the first result
        first = expected.id
        click_button(drv, "More like this")
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
        click_button(drv, "Details")
        wait_for_text(drv, "Rights holder")
        wait_for_text(drv, "Similar images")
        wait_idle(drv)
        assert f"detail={want.id}" in drv.current_url
        shot(drv, artifacts, "06-detail")
        drv.find_element(
            By.XPATH, '//*[@data-testid="stSidebar"]//div[@role="radiogroup"]//label[.//p[text()="Collection"]]'
        ).click()
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


# -- issue 18: the views a curator works in, looked at in the browser --------------------------


def _outside_requests(drv, base_url: str) -> list[str]:
    """URLs the page asked for that are not on the app's own server (from Chrome's log)."""
    import json as _json

    out = []
    for entry in drv.get_log("performance"):
        msg = _json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            u = msg["params"]["request"]["url"]
            if u.startswith(("http://", "https://", "ws://", "wss://")) and not u.startswith(
                (base_url, base_url.replace("http", "ws"))
            ):
                out.append(u)
    return out


def click_button(drv, text: str, *, starts: bool = False, timeout: float = WAIT) -> None:
    """Click the first button whose text is ``text`` (or starts with it), once there is one."""
    from selenium.webdriver.support.ui import WebDriverWait

    def find(d):
        for b in d.find_elements("css selector", "button"):
            t = (b.get_attribute("textContent") or "").strip()
            if (t.startswith(text) if starts else t == text) and b.is_displayed():
                return b
        return False

    button = WebDriverWait(drv, timeout, poll_frequency=0.2).until(find)
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
    button.click()


def _cards_per_row(drv, cards: int = 12, timeout: float = WAIT) -> int:
    """Result cards in the first row, once all ``cards`` are on the page and the layout has
    settled (Streamlit renders a run's elements one after another, and re-flows on a resize)."""
    deadline = time.monotonic() + timeout
    last: tuple[int, int] | None = None
    while True:
        tops: dict[int, int] = {}
        for el in drv.find_elements("css selector", '[class*="st-key-res_card_"]'):
            y = round(el.rect["y"])
            tops[y] = tops.get(y, 0) + 1
        now = (sum(tops.values()), tops[min(tops)] if tops else 0)
        if now[0] >= cards and now == last:
            return now[1]
        if time.monotonic() > deadline:
            raise AssertionError(f"result cards did not settle: {now[0]} of {cards} on the page")
        last = now
        time.sleep(0.5)


def _contrast(drv, css: str) -> float:
    """Contrast ratio (WCAG) of the first element matching ``css`` against a white page."""
    rgb = drv.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? getComputedStyle(e).color : null;", css
    )
    assert rgb, css
    r, g, b = (int(x) / 255 for x in rgb[rgb.index("(") + 1 : rgb.index(")")].split(",")[:3])

    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    lum = 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)
    return 1.05 / (lum + 0.05)


def test_the_curators_views_in_chromium(server, driver, artifacts):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, coll = server
    drv = driver
    try:
        # the grid on a laptop screen and on a wide monitor: cards wrap to the width, never squeezed
        drv.set_window_size(1280, 800)
        drv.get(url)
        wait_for_text(drv, "Searching for: all images")
        wait_idle(drv)
        laptop = _cards_per_row(drv)
        shot(drv, artifacts, "10-grid-laptop")
        drv.set_window_size(1920, 1080)
        time.sleep(1.0)
        wide = _cards_per_row(drv)
        shot(drv, artifacts, "11-grid-wide")
        assert laptop >= 3 and wide > laptop, (laptop, wide)
        # every image has alt text naming what it shows; captions are readable (WCAG AA)
        imgs = drv.find_elements(By.CSS_SELECTOR, "img")
        assert imgs and all((i.get_attribute("alt") or "").strip() for i in imgs)
        assert any("Corvus corax" in (i.get_attribute("alt") or "") for i in imgs)
        assert _contrast(drv, '[data-testid="stCaptionContainer"] p') >= 4.5

        # live suggestions: typed, no Enter; a suggestion is a click away
        box = drv.find_element(By.CSS_SELECTOR, 'input[aria-label="Search"]')
        box.send_keys("Corv")
        wait_for_text(drv, "Corvidae · family · 6 images")
        shot(drv, artifacts, "12-live-suggestions")
        click_button(drv, "Corvidae · family", starts=True)
        wait_for_text(drv, "Searching for: family Corvidae", MODEL_WAIT)
        wait_idle(drv)
        assert "q=Corvidae" in drv.current_url

        # the detail view: → and ← walk through the results, Esc goes back; the URL follows
        drv.get(f"{url}/?q=Corvidae")
        wait_for_text(drv, "Searching for: family Corvidae", MODEL_WAIT)
        wait_idle(drv)
        click_button(drv, "Details")
        wait_for_text(drv, "Result 1 of 12")
        wait_idle(drv)
        first_detail = drv.current_url
        heading = drv.find_element(By.TAG_NAME, "h3")
        # into the middle of the window first: at the top, Streamlit's fixed header covers it
        drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", heading)
        heading.click()  # focus on the page, not in an input
        ActionChains(drv).send_keys(Keys.ARROW_RIGHT).perform()
        wait_for_text(drv, "Result 2 of 12")
        wait_idle(drv)
        assert drv.current_url != first_detail and "detail=" in drv.current_url
        shot(drv, artifacts, "13-detail")
        ActionChains(drv).send_keys(Keys.ESCAPE).perform()
        wait_for_text(drv, "12 results")
        wait_idle(drv)
        assert "detail=" not in drv.current_url

        # the map without internet: the bundled outline, clusters with counts, no outside request
        drv.get_log("performance")  # forget what came before
        drv.get(f"{url}/?view=map")
        wait_for_text(drv, "8 of 12 results have coordinates")
        wait_idle(drv)
        time.sleep(2.0)  # deck.gl draws in the next frames
        assert drv.find_elements(By.CSS_SELECTOR, '[data-testid="stDeckGlJsonChart"] canvas')
        shot(drv, artifacts, "14-map-offline")
        assert _outside_requests(drv, url) == []

        # the taxonomy tree: a click on a node filters to it
        drv.get(f"{url}/?view=taxa")
        wait_for_text(drv, "family Corvidae · 6")
        wait_idle(drv)
        shot(drv, artifacts, "15-taxonomy-tree")
        click_button(drv, "family Corvidae · 6")
        wait_for_text(drv, "genus Corvus · 3")
        wait_idle(drv)
        assert "family=Corvidae" in drv.current_url
        shot(drv, artifacts, "16-taxonomy-tree-corvidae")

        # an empty collection says so, and how to fill it
        drv.get(f"{url}/?collection=empty.coll")
        wait_for_text(drv, "This collection is empty")
        wait_idle(drv)
        assert "bioclip-index build" in drv.find_element(By.TAG_NAME, "body").text
        shot(drv, artifacts, "17-empty-collection")
    except Exception:
        shot(drv, artifacts, "failure-curator")
        raise
    finally:
        drv.set_window_size(1400, 1000)
