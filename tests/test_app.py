"""The Streamlit page, driven by Streamlit's AppTest against a small collection (tiny model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_app_fixtures import build_app_collection, picture_bytes

pytest.importorskip("streamlit")
from apptest_help import TIMEOUT, ok, settle  # noqa: E402
from apptest_help import coll as coll  # noqa: E402 (fixtures)
from apptest_help import engine as engine
from apptest_help import ids as ids
from streamlit.testing.v1 import AppTest  # noqa: E402

from search_ui.text import md  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "search_ui" / "app.py"


@pytest.fixture
def app(coll, monkeypatch):
    monkeypatch.setenv("BIOCLIP_SEARCH_COLLECTIONS", str(coll.path))
    monkeypatch.setenv("BIOCLIP_SEARCH_DEVICE", "cpu")

    def start(query: dict | None = None) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
        if query:
            at.query_params.update(query)
        at.run()
        return settle(at)

    return start


def uploader(at: AppTest):
    """The photo uploader (its key changes each time the page empties it)."""
    gen = at.session_state["_upload_gen"] if "_upload_gen" in at.session_state else 0  # noqa: SIM401
    return at.file_uploader(key=f"w_upload_{gen}")


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def result_ids(at: AppTest, prefix: str = "res") -> list[int]:
    return [int(b.key.rsplit("_", 1)[1]) for b in at.button if b.key and b.key.startswith(f"{prefix}_detail_")]


def captions(at: AppTest) -> list[str]:
    return [c.value for c in at.caption]


def understood(at: AppTest) -> str:
    (line,) = [c for c in captions(at) if c.startswith("Searching for: ")]
    return line[len("Searching for: ") :]


def click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click().run()
    ok(at)
    return at


# -- start, text and taxon queries ------------------------------------------------------------


def test_start_page_lists_the_collection_and_suggests_taxa(app):
    at = app()
    assert errors(at) == []
    assert len(result_ids(at)) == 12
    assert understood(at) == "all images"
    assert md("No query: the images passing the filters, in id order, not ranked") in captions(at)
    labels = [b.label for b in at.button if b.key and b.key.startswith("sugg_")]
    assert labels and all(" · " in lab and "image" in lab for lab in labels)
    assert len(at.image) == 12  # one thumbnail per card
    assert at.text_input(key="w_q").value == ""
    assert dict(at.query_params) == {}


def test_a_taxon_query_shows_how_it_was_understood(app):
    at = app()
    at.text_input(key="w_q").input("corvidae").run()
    ok(at)
    assert understood(at).startswith('family Corvidae, as "a photo of Animalia Chordata Aves Passeriformes Corvidae')
    # the query's kind and what it was searched with (12 images: no index, every image compared)
    assert [c for c in captions(at) if c.startswith("Searched as")] == [
        md("Searched as a text query (exact search, a Flat index: recall@10 1 by definition)")
    ], captions(at)[:3]
    assert at.query_params == {"q": "corvidae"}
    assert len(result_ids(at)) == 12
    assert any(c.startswith("species · cat. MUS-") and "score " in c for c in captions(at))


def test_free_text_and_suggestions(app):
    at = app()
    at.text_input(key="w_q").input("cor").run()
    ok(at)
    assert understood(at) == 'free text "cor"'
    sugg = {b.label: b.key for b in at.button if b.key and b.key.startswith("sugg_")}
    key = sugg["Corvidae · family · 6 images"]
    click(at, key)
    assert at.text_input(key="w_q").value == "Corvidae"
    assert understood(at).startswith("family Corvidae")


def test_an_unknown_taxon_is_searched_as_free_text_and_an_unknown_taxon_filter_says_so(app):
    at = app()
    at.text_input(key="w_q").input("Nonexistus fictus").run()
    ok(at)
    assert understood(at) == 'free text "Nonexistus fictus"'
    at = app({"species": "Nonexistus fictus"})
    assert any("does not occur in this collection" in i.value for i in at.info)
    assert any("Nothing found" in i.value for i in at.info)
    assert result_ids(at) == []


# -- image search ------------------------------------------------------------------------------


def test_upload_search_puts_the_same_picture_first_and_shows_likely_taxa(app, ids):
    at = app()
    uploader(at).set_value(("mine.png", picture_bytes(5), "image/png")).run()
    ok(at)
    assert errors(at) == []
    assert result_ids(at)[0] == ids["MUS-005"]
    assert understood(at) == "images similar to the uploaded picture mine.png"
    bars = list(at.get("progress"))
    assert len(bars) == 4  # the collection's four species, with scores
    assert at.selectbox(key="w_zs_rank").value == "species"
    at.selectbox(key="w_zs_rank").set_value("family").run()
    ok(at)
    texts = " ".join(p.proto.text for p in at.get("progress"))
    assert "Corvidae" in texts and "Corvus corax" not in texts
    # the photo's key is in the URL (the link reopens the search), and a text search takes over again
    assert "q" not in at.query_params and len(at.query_params["photo"]) == 32
    at.text_input(key="w_q").input("Rosaceae").run()
    ok(at)
    assert understood(at).startswith("family Rosaceae")
    assert uploader(at).value is None and "photo" not in at.query_params  # nothing lingers unused


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("notes.jpg", b"just some text, not a picture", "not a picture"),
        ("anim.png", None, "is a GIF image"),
        ("empty.webp", b"", "is empty"),
    ],
)
def test_a_bad_upload_gets_a_short_message_and_the_app_stays_up(app, name, data, message):
    if data is None:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (40, 40)).save(buf, format="GIF")
        data = buf.getvalue()
    at = app()
    uploader(at).set_value((name, data, "image/jpeg")).run()
    ok(at)
    assert any(message in e for e in errors(at)), errors(at)
    assert result_ids(at) == []
    uploader(at).set_value(None).run()
    ok(at)
    assert errors(at) == [] and len(result_ids(at)) == 12


def test_a_too_large_upload_is_refused(app, monkeypatch):
    from search_ui import upload

    monkeypatch.setattr(upload, "MAX_UPLOAD_BYTES", 1000)
    at = app()
    uploader(at).set_value(("big.png", picture_bytes(1) * 20, "image/png")).run()
    ok(at)
    assert any("pictures up to" in e for e in errors(at))


# -- more like this, details -------------------------------------------------------------------


def test_more_like_this(app, ids):
    at = app()
    target = ids["MUS-003"]
    click(at, f"res_like_{target}")
    assert understood(at) == f"images similar to image {target}"
    got = result_ids(at)
    assert target not in got and len(got) == 11
    assert at.query_params["like"] == str(target)


def test_detail_view_shows_everything_about_an_image(app, ids):
    at = app()
    first = ids["MUS-000"]
    click(at, f"res_detail_{first}")
    assert any("Corvus corax" in s.value for s in at.subheader)
    assert any("CC0-1.0" in m.value and "Test Museum" in m.value for m in at.markdown)
    table = at.table[0].value
    fields = dict(zip(table["field"], table["value"]))
    assert fields["catalogNumber"] == "MUS-000" and fields["notes"] == "note for image 0"
    assert fields["references"] == "https://example.org/record/0"
    links = list(at.get("link_button"))
    assert links and links[0].proto.url == "https://example.org/record/0"
    # the other image of the same specimen, and similar images
    assert result_ids(at, "rec") == [ids["MUS-004"]]
    assert len(result_ids(at, "sim")) == 8 and first not in result_ids(at, "sim")
    assert at.query_params["detail"] == str(first)
    click(at, f"rec_detail_{ids['MUS-004']}")
    assert any("Corvus corax" in s.value for s in at.subheader)
    click(at, "detail_like")
    assert understood(at) == f"images similar to image {ids['MUS-004']}"
    click(at, f"res_detail_{result_ids(at)[0]}")
    click(at, "detail_back")
    assert len(result_ids(at)) == 11


def test_detail_of_an_unknown_image(app):
    at = app({"detail": "999"})
    assert any("no image 999" in w.value for w in at.warning)


# -- filters -----------------------------------------------------------------------------------


def rows(at: AppTest):
    at.radio(key="w_view").set_value("table").run()
    ok(at)
    df = at.dataframe[0].value
    return df.to_dict("records")


def test_filters_narrow_the_results_and_show_counts(app, engine):
    at = app()
    country = at.multiselect(key="w_f_country")
    assert country.options == ["Côte d'Ivoire · 4", "Kenya · 4", "Norway · 4"]
    country.set_value(["Kenya"]).run()
    ok(at)
    got = rows(at)
    assert len(got) == 4 and {r["country"] for r in got} == {"Kenya"}
    assert at.query_params["country"] == "Kenya"
    # counts are for the current results; for a filter in use, for the results without it
    assert at.multiselect(key="w_f_country").options == ["Côte d'Ivoire · 4", "Kenya · 4", "Norway · 4"]
    assert at.multiselect(key="w_f_license").options == ["CC-BY-4.0 · 0", "CC0-1.0 · 4"]

    at.selectbox(key="w_taxon_rank").set_value("genus").run()
    at.multiselect(key="w_f_genus").set_value(["Corvus"]).run()
    ok(at)
    got = rows(at)
    assert got and all(r["scientificName"] == "Corvus corax" and r["country"] == "Kenya" for r in got)

    at.slider(key="w_year").set_range(1900, 1950).run()
    ok(at)
    assert all(int(str(r["date"])[:4]) <= 1950 for r in rows(at))
    at.radio(key="w_coords").set_value("with coordinates").run()
    ok(at)
    assert at.query_params["has_coordinates"] == "true"
    at.multiselect(key="w_f_institutionCode").set_value(["MZB"]).run()
    at.multiselect(key="w_f_basisOfRecord").set_value(["PreservedSpecimen"]).run()
    at.multiselect(key="w_f_collectionCode").set_value(["BIRDS"]).run()
    at.multiselect(key="w_f_license").set_value(["CC-BY-4.0"]).run()
    ok(at)
    # the active filters can be removed one by one, or all at once
    chips = {b.label: b.key for b in at.button if b.key and b.key.startswith("chip_")}
    assert {
        "✕ Country: Kenya",
        "✕ Genus: Corvus",
        "✕ year: 1900–1950",
        "✕ with coordinates",
        "✕ License: CC-BY-4.0",
    } <= set(chips)
    click(at, chips["✕ Country: Kenya"])
    assert "country" not in at.query_params and at.multiselect(key="w_f_country").value == []
    assert at.query_params["genus"] == "Corvus"
    click(at, "chip_clear")
    assert at.multiselect(key="w_f_country").value == []
    assert len(rows(at)) == 12 and dict(at.query_params) == {"view": "table"}


def test_filters_with_no_result_say_so(app):
    at = app({"q": "Corvidae", "country": "Kenya", "family": "Rosaceae", "institutionCode": "MZB"})
    assert result_ids(at) == []
    assert any("Nothing found" in i.value for i in at.info)


def test_a_url_runs_the_search_and_fills_the_widgets(app):
    at = app(
        {
            "q": "Pica pica",
            "country": ["Kenya", "Côte d'Ivoire"],
            "collectionCode": 'PLANTS & "SEEDS"',
            "year": "1900..2000",
            "view": "table",
        }
    )
    assert at.text_input(key="w_q").value == "Pica pica"
    assert at.multiselect(key="w_f_country").value == ["Kenya", "Côte d'Ivoire"]
    assert understood(at).startswith("species Pica pica")
    assert "country" in understood(at) and "year" in understood(at)
    assert at.slider(key="w_year").value == (1900, 2000)
    assert at.radio(key="w_view").value == "table"
    df = at.dataframe[0].value
    assert set(df["country"]) <= {"Kenya", "Côte d'Ivoire"}
    assert at.query_params["collectionCode"] == 'PLANTS & "SEEDS"'


def test_bad_url_values_get_a_warning(app):
    at = app({"like": "abc", "year": "soon"})
    assert len(at.warning) == 2 and all("The link had a problem" in w.value for w in at.warning)
    assert len(result_ids(at)) == 12


def test_an_unknown_image_id_in_the_url(app):
    at = app({"like": "12345"})
    assert any("no image with id 12345" in e for e in errors(at))


# -- views, paging, export ---------------------------------------------------------------------


def test_table_map_and_chart_views(app):
    at = app()
    assert len(rows(at)) == 12
    at.radio(key="w_view").set_value("map").run()
    ok(at)
    assert at.get("deck_gl_json_chart")
    assert any("8 of 12 results have coordinates" in c for c in captions(at))
    at.radio(key="w_view").set_value("taxa").run()
    ok(at)
    assert [b.label for b in at.button if b.key and b.key.startswith("tree_path_")] == ["All results · 12"]


def test_paging(app, monkeypatch):
    from search_ui import searching

    monkeypatch.setattr(searching, "PAGE_SIZE", 5)
    at = app()
    assert len(result_ids(at)) == 5
    assert any("Page 1 of 3" in c for c in captions(at))
    click(at, "page_next")
    assert any("Page 2 of 3" in c for c in captions(at)) and len(result_ids(at)) == 5
    click(at, "page_next")
    assert len(result_ids(at)) == 2 and at.query_params["page"] == "3"
    click(at, "page_prev")
    assert any("Page 2 of 3" in c for c in captions(at))
    at.select_slider(key="w_k").set_value(50).run()
    ok(at)
    assert any("Page 1 of 3" in c for c in captions(at))


def test_browsing_pages_through_every_image_not_only_the_first_k(app, monkeypatch):
    from search_ui import searching, state

    monkeypatch.setattr(searching, "PAGE_SIZE", 4)
    monkeypatch.setattr(state, "K_CHOICES", (5, 50))
    at = app({"k": "5"})
    assert any("**12** images" in m.value and "describe the first 5" in m.value for m in at.markdown)
    assert any("Page 1 of 3 · results 1–4 of 12" in c for c in captions(at))
    click(at, "page_next")
    click(at, "page_next")
    assert result_ids(at) == sorted(result_ids(at)) and len(result_ids(at)) == 4
    assert any("results 9–12 of 12" in c for c in captions(at))
    assert at.query_params["page"] == "3" and at.query_params["k"] == "5"


def test_export_button_and_share_link(app):
    at = app({"q": "Corvidae", "country": "Kenya"})
    (button,) = at.get("download_button")
    assert button.proto.label == "Download results (CSV)"
    assert any("Link to this search" in c and "q=Corvidae&country=Kenya" in c for c in captions(at))


# -- collection page, several collections, broken setups --------------------------------------


def test_collection_page(app, coll):
    at = app()
    at.radio(key="w_tab").set_value("collection").run()
    ok(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "12" and metrics["Images that could not be read"] == "1"
    tables = [t.value for t in at.table]
    text = " ".join(str(t.to_dict()) for t in tables)
    assert coll.model_source in text and "not-an-image" in text and "species" in text
    assert at.query_params["tab"] == "collection"
    at.radio(key="w_tab").set_value("search").run()
    ok(at)
    assert len(result_ids(at)) == 12


def test_several_collections_can_be_picked(coll, tmp_path, tiny_model_dir, monkeypatch):
    import os

    small = build_app_collection(tmp_path, tiny_model_dir, n=4)
    monkeypatch.setenv("BIOCLIP_SEARCH_COLLECTIONS", os.pathsep.join([str(coll.path), str(small.path)]))
    monkeypatch.setenv("BIOCLIP_SEARCH_DEVICE", "cpu")
    at = settle(AppTest.from_file(str(APP), default_timeout=TIMEOUT).run())
    picker = at.selectbox(key="w_collection")
    assert picker.options == [str(coll.path), str(small.path)]  # same folder name: full paths
    assert len(result_ids(at)) == 12
    settle(picker.set_value(picker.options[1]).run())
    assert len(result_ids(at)) == 4
    assert at.query_params["collection"] in (picker.options[1], [picker.options[1]])


def test_no_collection(monkeypatch):
    monkeypatch.setenv("BIOCLIP_SEARCH_COLLECTIONS", "")
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    ok(at)
    assert any("No collection" in e for e in errors(at))


def test_a_missing_collection(monkeypatch, tmp_path):
    monkeypatch.setenv("BIOCLIP_SEARCH_COLLECTIONS", str(tmp_path / "nothing-here"))
    at = settle(AppTest.from_file(str(APP), default_timeout=TIMEOUT).run())
    assert any("Cannot open the collection" in e for e in errors(at))


def test_an_unexpected_error_shows_a_short_message_not_a_trace(app, monkeypatch):
    from search_ui import searching

    def boom(*a, **k):
        raise RuntimeError("internal detail that must not be shown")

    monkeypatch.setattr(searching, "run_search", boom)
    at = app()
    assert errors(at) == ["Something went wrong on our side (the details are in the server log). Try another search."]
    monkeypatch.undo()
