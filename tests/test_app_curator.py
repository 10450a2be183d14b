"""Issue 18, the app a curator works in all day, through Streamlit's AppTest: background loading,
what is searched (each part removable), live suggestions and clickable corrections, shareable photo
searches, the detail view and its way through the results, the offline map, the taxonomy tree,
several results selected, an empty collection, wording, alt text, and every state in the URL.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from test_app_fixtures import build_app_collection, picture_bytes

pytest.importorskip("streamlit")
from apptest_help import TIMEOUT, loading_shown, ok, settle  # noqa: E402
from apptest_help import coll as coll  # noqa: E402 (fixtures)
from apptest_help import engine as engine
from apptest_help import ids as ids
from streamlit.testing.v1 import AppTest  # noqa: E402

from search_ui import loading  # noqa: E402
from search_ui.loading import EngineLoader  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "search_ui" / "app.py"


@pytest.fixture
def app(coll, monkeypatch):
    def start(query: dict | None = None, path: Path | None = None) -> AppTest:
        monkeypatch.setenv("BIOCLIP_SEARCH_COLLECTIONS", str(path or coll.path))
        monkeypatch.setenv("BIOCLIP_SEARCH_DEVICE", "cpu")
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
        if query:
            at.query_params.update(query)
        return settle(at.run())

    return start


def click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click().run()
    ok(at)
    return at


def result_ids(at: AppTest, prefix: str = "res") -> list[int]:
    return [int(b.key.rsplit("_", 1)[1]) for b in at.button if b.key and b.key.startswith(f"{prefix}_detail_")]


def understood(at: AppTest) -> str:
    (line,) = [c.value for c in at.caption if c.value.startswith("Searching for: ")]
    return line[len("Searching for: ") :]


def part_keys(at: AppTest) -> list[str]:
    return [b.key for b in at.button if b.key and b.key.startswith("part_")]


def uploader(at: AppTest):
    gen = at.session_state["_upload_gen"] if "_upload_gen" in at.session_state else 0  # noqa: SIM401
    return at.file_uploader(key=f"w_upload_{gen}")


def markdown(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


# -- background loading ------------------------------------------------------------------------


def test_the_search_box_works_while_the_collection_opens_and_the_model_loads(
    app, tmp_path, tiny_model_dir, monkeypatch
):
    small = build_app_collection(tmp_path, tiny_model_dir, n=4)  # its own loader (a new path)
    opened, model_gate = threading.Event(), threading.Event()
    real_open = loading.open_search_engine

    def gated_open(path, device):  # the real engine, once the test lets it open
        opened.wait(TIMEOUT)
        engine = real_open(path, device)
        real_load = engine.load_model
        engine.load_model = lambda: (model_gate.wait(TIMEOUT), real_load())[1]
        return engine

    monkeypatch.setattr(loading, "open_search_engine", gated_open)
    monkeypatch.setenv("BIOCLIP_SEARCH_COLLECTIONS", str(small.path))
    monkeypatch.setenv("BIOCLIP_SEARCH_DEVICE", "cpu")
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    ok(at)
    assert any("Opening the collection" in i.value for i in at.info)
    assert not at.text_input(key="w_q").disabled  # usable at once
    at.text_input(key="w_q").input("Corvidae").run()  # typed before the collection is open
    ok(at)
    assert at.query_params["q"] == "Corvidae"

    opened.set()
    (loader,) = [ld for ld in EngineLoader.started if ld.path == str(small.path)]
    for _ in range(200):
        if loader.status().phase == "model":
            break
        threading.Event().wait(0.05)
    at.run()
    ok(at)
    # the collection is open, the model not yet: the words wait for it, visibly
    assert any("needs the model, which is still loading" in i.value for i in at.info)
    assert result_ids(at) == []
    model_gate.set()
    assert loader.wait(TIMEOUT) and loader.status().model_ready
    at.run()
    ok(at)
    assert understood(at).startswith("family Corvidae") and len(result_ids(at)) == 4
    assert not loading_shown(at)


def test_the_loader_reports_a_collection_that_cannot_be_opened(tmp_path):
    ld = EngineLoader(str(tmp_path / "nothing"), "cpu").start()
    assert ld.wait(TIMEOUT)
    status = ld.status()
    assert status.phase == "failed" and "not found" in status.error and ld.engine is None
    assert status.describe().startswith("Cannot open the collection")


# -- what is searched ----------------------------------------------------------------------------


def test_more_like_this_replaces_the_words_and_shows_the_image_searched_like(app, ids):
    at = app({"q": "Corvidae", "country": "Kenya"})
    assert part_keys(at) == ["part_words_0"] and "words “Corvidae”" in markdown(at)
    target = result_ids(at)[0]
    click(at, f"res_like_{target}")
    assert at.text_input(key="w_q").value == ""  # the old words do not linger, ignored
    assert "q" not in at.query_params and at.query_params["like"] == str(target)
    assert part_keys(at) == [f"part_image_{target}"]
    bar_images = [img.alt for e in at.get("image") for img in e.proto.imgs if "catalogue number" in img.alt]
    name = {v: k for k, v in ids.items()}[target]
    assert any(name in alt for alt in bar_images)  # image 3 is shown, with its name
    assert f"image {target} · *" in markdown(at)
    # the filters stay as chips; removing the image goes back to browsing them
    assert any(b.label == "✕ Country: Kenya" for b in at.button)
    click(at, f"part_image_{target}")
    assert understood(at).startswith("all images") and dict(at.query_params) == {"country": "Kenya"}


def test_an_upload_replaces_the_words_and_removing_the_photo_empties_the_uploader(app, ids):
    at = app({"q": "Corvidae"})
    uploader(at).set_value(("mine.png", picture_bytes(5), "image/png")).run()
    ok(at)
    assert at.text_input(key="w_q").value == "" and "q" not in at.query_params
    assert part_keys(at) == ["part_photo_0"] and "your photo mine.png" in markdown(at)
    assert result_ids(at)[0] == ids["MUS-005"]
    click(at, "part_photo_0")
    assert uploader(at).value is None and "photo" not in at.query_params
    assert understood(at) == "all images" and len(result_ids(at)) == 12


# -- live suggestions and corrections --------------------------------------------------------------


def test_the_search_box_is_live_and_a_correction_is_a_button(app, ids):
    at = app()
    box = at.text_input(key="w_q")
    assert box.proto.live_debounce_ms == 500  # commits as the user pauses typing, no Enter needed
    box.input("Corvus corx").run()
    ok(at)
    fixes = {b.label: b.key for b in at.button if b.key and b.key.startswith("fix_")}
    assert "Corvus corax" in fixes
    click(at, fixes["Corvus corax"])
    assert at.text_input(key="w_q").value == "Corvus corax"
    assert understood(at).startswith("species Corvus corax")
    at.text_input(key="w_q").input("Pic").run()
    ok(at)
    assert any(b.label.startswith("Pica") for b in at.button if b.key and b.key.startswith("sugg_"))


# -- a shareable photo search ------------------------------------------------------------------------


def test_a_photo_search_link_reopens_the_search(app, coll, ids):
    from search_ui.photo_cache import PhotoCache, photo_key

    at = app()
    uploader(at).set_value(("mine.png", picture_bytes(7), "image/png")).run()
    ok(at)
    key = at.query_params["photo"]
    assert key == photo_key(picture_bytes(7))
    first = result_ids(at)
    kept = PhotoCache.for_collection(coll.path).get(key)
    assert kept is not None and kept.name == "mine.png" and kept.preview
    assert (coll.path / "cache" / "queries" / f"{key}.npy").exists()

    again = app({"photo": key})  # a new session, no upload: the link alone
    assert result_ids(again) == first and result_ids(again)[0] == ids["MUS-007"]
    assert "your photo mine.png" in markdown(again)

    gone = app({"photo": "f" * 32})
    assert any("no longer kept" in e.value and "upload it again" in e.value for e in gone.error)


def test_the_photo_cache_keeps_to_its_size_and_age(tmp_path):
    import numpy as np

    from search_ui.photo_cache import PhotoCache

    cache = PhotoCache(tmp_path / "q", max_bytes=10_000, max_age_days=30)
    keys = [cache.put(picture_bytes(i, "JPEG"), f"p{i}.jpg", np.ones((1, 8), np.float32)) for i in range(12)]
    assert cache.size_bytes() <= 10_000
    assert cache.get(keys[-1]) is not None and cache.get(keys[0]) is None  # the oldest went first
    old = PhotoCache(tmp_path / "q", max_age_days=0)
    assert old.get(keys[-1]) is None and not (tmp_path / "q" / f"{keys[-1]}.json").exists()
    assert cache.get("../../../etc/passwd") is None


# -- the detail view ---------------------------------------------------------------------------------


def test_the_detail_view_walks_through_the_results_and_keeps_its_place_in_the_url(app, monkeypatch):
    from search_ui import searching

    monkeypatch.setattr(searching, "PAGE_SIZE", 5)
    at = app()
    listing = result_ids(at)
    click(at, f"res_detail_{listing[4]}")
    assert "Result **5** of 12" in markdown(at)
    assert at.button(key="detail_next").proto.shortcut == "right"
    assert at.button(key="detail_prev").proto.shortcut == "left"
    assert at.button(key="detail_back").proto.shortcut == "escape"
    click(at, "detail_next")  # onto the next page of the results
    assert at.query_params["detail"] == "5" and at.query_params["page"] == "2"
    assert "Result **6** of 12" in markdown(at)
    reopened = app(dict(at.query_params))  # the URL holds the detail view's place
    assert "Result **6** of 12" in markdown(reopened)
    click(reopened, "detail_back")
    assert result_ids(reopened) == list(range(5, 10))
    click(at, "detail_prev")
    click(at, "detail_prev")
    assert at.query_params["detail"] == "3" and "page" not in at.query_params  # page 1


def test_the_detail_view_shows_long_values_whole_and_wide_cards(app, ids):
    at = app({"detail": str(ids["MUS-000"])})
    table = at.table[0].value  # a static table: values wrap, nothing is cut off
    fields = dict(zip(table["field"], table["value"]))
    assert fields["notes"] == "note for image 0"
    assert not list(at.dataframe)
    labels = [b.label for b in at.button if b.key and b.key.startswith("rec_")]
    assert labels == ["Details", "More like this"]
    assert "indexed_at" in fields and "." not in fields["indexed_at"] and "T" not in fields["indexed_at"]


def test_a_card_names_an_image_not_the_last_segment_of_its_url():
    from indexer.search.results import Hit
    from search_ui.hit_fields import alt_text, image_label

    url = "https://images.example.org/media/1234/preview"
    hit = Hit(3, 0.5, url, {"mediaURL": url, "catalogNumber": "MUS-0012", "scientificName": "Salmo trutta L."})
    assert image_label(hit) == "MUS-0012 · images.example.org"
    assert image_label(Hit(1, 0.5, "/x/img_05.png", {})) == "img_05.png"
    assert alt_text(hit) == "Salmo trutta L., catalogue number MUS-0012"


# -- the map ---------------------------------------------------------------------------------------------


def test_the_map_works_offline_and_clusters_points_with_counts(app):
    at = app({"view": "map"})
    (chart,) = at.get("deck_gl_json_chart")
    spec = json.loads(chart.proto.json)
    # no tile server: no provider, and a style that is not null (Streamlit fills a null one with Carto's)
    assert spec.get("mapProvider") in (None, "") and spec.get("mapStyle") is not None
    assert "http" not in str(spec.get("mapStyle"))
    layers = {layer["id"]: layer for layer in spec["layers"]}
    assert len(layers["countries"]["data"]["features"]) > 150  # the bundled outline of the world
    assert (
        layers["clusters"]["radiusUnits"] == "pixels"
    )  # circles sized in pixels (a bare string would be an expression)
    counts = [d["count"] for d in layers["clusters"]["data"]]
    assert sum(counts) == 8 and [d["label"] for d in layers["counts"]["data"]] == [str(c) for c in counts]
    assert any("8 of 12 results have coordinates" in c.value for c in at.caption)
    at.radio(key="w_basemap").set_value("tiles").run()
    ok(at)
    spec = json.loads(at.get("deck_gl_json_chart")[0].proto.json)
    assert spec.get("mapProvider") == "carto" and "countries" not in {lay["id"] for lay in spec["layers"]}
    assert at.query_params["basemap"] == "tiles"


def test_points_in_one_place_are_one_cluster_with_their_count():
    from search_ui.geo import clusters

    pts = [{"lat": 59.9, "lon": 10.7, "id": i, "name": "Pica pica"} for i in range(4)]
    pts += [{"lat": -1.3, "lon": 36.8, "id": 9, "name": "Corvus corax"}]
    got = clusters(pts)
    assert [(c.count, c.names) for c in got] == [(4, ("Pica pica",)), (1, ("Corvus corax",))]


# -- the taxonomy tree -------------------------------------------------------------------------------------


def test_the_taxonomy_tree_counts_the_results_and_each_node_filters(app):
    at = app({"view": "taxa"})
    nodes = {b.label: b.key for b in at.button if b.key and b.key.startswith("tree_") and "path" not in b.key}
    assert nodes["kingdom Animalia · 9"] and nodes["kingdom Plantae · 3"] and nodes["family Corvidae · 6"]
    click(at, nodes["family Corvidae · 6"])
    assert at.query_params["family"] == "Corvidae" and at.query_params["view"] == "taxa"
    path = [b.label for b in at.button if b.key and b.key.startswith("tree_path_")]
    assert path == [
        "All results · 6",
        "kingdom Animalia · 6",
        "phylum Chordata · 6",
        "class Aves · 6",
        "order Passeriformes · 6",
        "family Corvidae · 6",
    ]
    nodes = {b.label: b.key for b in at.button if b.key and b.key.startswith("tree_") and "path" not in b.key}
    assert set(nodes) >= {"genus Corvus · 3", "genus Pica · 3", "species Corvus corax · 3"}
    click(at, nodes["species Corvus corax · 3"])
    assert at.query_params["species"] == "Corvus corax"
    click(at, "tree_path_0")  # back to all results
    assert "family" not in at.query_params and "species" not in at.query_params


# -- several results selected ----------------------------------------------------------------------------


def test_select_several_results_and_act_on_them(app, engine, ids):
    a, b = ids["MUS-001"], ids["MUS-006"]
    at = app()
    at.checkbox(key=f"res_sel_{a}").check().run()
    at.checkbox(key=f"res_sel_{b}").check().run()
    ok(at)
    assert at.query_params["sel"] == [str(a), str(b)]
    assert "**2 results selected**" in markdown(at)
    (export,) = [d for d in at.get("download_button") if d.proto.label == "Download the selected (CSV)"]
    click(at, "sel_like")
    assert at.query_params["like"] == [str(a), str(b)]
    got = result_ids(at)
    assert a not in got and b not in got and len(got) == 10
    # "more like these" is the mean of their vectors
    import numpy as np

    mean = engine.vectors([a, b]).mean(axis=0, keepdims=True)
    want = [h.id for h in engine.search(vector=mean / np.linalg.norm(mean), k=12).hits if h.id not in (a, b)]
    assert got == want[: len(got)]
    assert sorted(part_keys(at)) == sorted([f"part_image_{a}", f"part_image_{b}"])
    click(at, f"part_image_{a}")  # one image less: more like the other alone
    assert at.query_params["like"] == str(b)
    click(at, "sel_clear")
    assert "sel" not in at.query_params


# -- an empty collection, wording ---------------------------------------------------------------------------


def test_an_empty_collection_says_so_and_how_to_fill_it(app, tmp_path, tiny_model_dir):
    from bioclip import load_model
    from indexer.store import Collection

    model = load_model(f"local-dir:{tiny_model_dir}", device="cpu")
    Collection.create(tmp_path / "empty.coll", model.describe(), dimension=model.dimension)
    at = app(path=tmp_path / "empty.coll")
    (info,) = [i.value for i in at.info if "empty" in i.value]
    assert "no images have been added" in info and f"bioclip-index build {tmp_path / 'empty.coll'}" in info
    assert not any("Nothing found" in i.value for i in at.info)


def test_curator_wording(app, engine):
    from search_ui import searching
    from search_ui.state import BrowseState

    one = BrowseState().with_values("country", ["Kenya"]).with_values("genus", ["Vulpes"])
    result = searching.run_search(engine, one)
    assert searching.result_summary(one, result, 1) == "**1** image passes the filters"
    at = app({"tab": "collection"})
    metrics = {m.label: m.value for m in at.metric}
    assert "Generation" not in metrics and "Last updated" in metrics
    assert metrics["Last updated"].endswith("UTC") and "." not in metrics["Last updated"]
    assert not any("Generation" in c.value or "." in c.value.split("Created ")[-1][:19] for c in at.caption)


def test_every_image_has_alt_text_with_the_scientific_name(app, ids):
    at = app({"detail": str(ids["MUS-002"])})
    alts = [img.alt for e in at.get("image") for img in e.proto.imgs]
    assert alts and all(alt.strip() for alt in alts)
    assert alts[0] == "Vulpes vulpes, catalogue number MUS-002"


def test_every_page_state_round_trips_through_the_url():
    from search_ui.state import BrowseState

    s = (
        BrowseState()
        .more_like_these([3, 5])
        .with_values("family", ["Corvidae"])
        .with_view("map")
        .with_basemap("tiles")
        .with_selected(3, True)
        .with_selected(7, True)
        .with_detail(5, page=2)
    )
    back, notices = BrowseState.from_query_string(s.query_string())
    assert back == s and notices == []
