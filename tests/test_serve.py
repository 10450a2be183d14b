"""bioclip-serve: the real server in a subprocess on 127.0.0.1, talked to over HTTP (urllib3).

Every endpoint, every error code, uploads (a non-image, a decompression bomb, an oversized body),
path traversal and symlinks, SQL in filter values, HTML and Markdown in metadata returned as plain
strings, the OpenAPI description, API keys, CORS, rate limits, new generations picked up while
serving, and a graceful stop on SIGTERM."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import struct
import zlib

import pytest
from imagegen import picture
from servehelp import HTML, MARKDOWN, Server, build_collection

from indexer.search.engine import SearchEngine

pytestmark = pytest.mark.slow

ORIGIN = "https://portal.example.org"
KEY = "k" * 20 + "-museum-portal"


@pytest.fixture(scope="module")
def col(tmp_path_factory, tiny_model_source):
    root = tmp_path_factory.mktemp("serve")
    path, folder = build_collection(root, tiny_model_source)
    return path, folder, root


@pytest.fixture(scope="module")
def server(col):
    path, _, root = col
    s = Server([str(path), "--rate-limit", "none"], log=root / "server.log")
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


def body(resp):
    return json.loads(resp.data.decode("utf-8"))


def err(resp):
    data = body(resp)
    assert set(data) == {"error"} and set(data["error"]) >= {"code", "message"}, data
    assert "Traceback" not in resp.data.decode() and 'File "' not in resp.data.decode()
    return resp.status, data["error"]["code"]


def png(size=(96, 80), seed=3) -> bytes:
    buf = io.BytesIO()
    picture(seed, size).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def multipart(server, name="col", files=(("image", "photo.png", b"", "image/png"),), fields=None):
    from urllib3 import encode_multipart_formdata

    parts = [(f, (fn, data, ctype)) for f, fn, data, ctype in files] + list((fields or {}).items())
    data, ctype = encode_multipart_formdata(parts)
    return server.request("POST", f"/v1/collections/{name}/search", body=data, headers={"Content-Type": ctype})


# -- the endpoints -----------------------------------------------------------------------------


def test_probes_and_collections(server, col):
    assert body(server.get("/healthz")) == {"status": "ok"}
    ready = body(server.get("/readyz"))
    assert ready["status"] == "ready" and ready["collections"]["col"]["generation"] >= 1
    assert "pid" not in ready  # a public server says nothing about its process
    listing = body(server.get("/v1/collections"))
    assert [c["name"] for c in listing] == ["col"] and listing[0]["images"] == 16
    info = body(server.get("/v1/collections/col"))
    assert info["images"] == 16 and info["model"]["dimension"] == 64
    assert {"field": "year", "type": "integer"} in info["fields"]
    assert info["index"]["type"] and "ranks" in info and "path" not in info
    assert "/" not in info["model"]["name"].partition(":")[2]  # the model's folder, not its path


def test_get_search_matches_the_engine_and_pages(server, col):
    path = col[0]
    engine = SearchEngine.open(path, refresh_interval=None)
    r = server.get("/v1/collections/col/search", fields={"q": "Corvus", "k": 4})
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
    data = body(r)
    want = engine.search("Corvus", k=4)
    assert [h["id"] for h in data["hits"]] == [h.id for h in want.hits]
    assert [h["score"] for h in data["hits"]] == pytest.approx([h.score for h in want.hits], abs=1e-5)
    assert data["interpretation"] == want.interpretation and data["has_more"] and data["next_offset"] == 4
    assert data["collection"] == "col" and data["k"] == 4 and data["offset"] == 0
    hit = data["hits"][0]
    assert "location" not in hit and "key" not in hit  # a public server keeps its paths to itself
    assert hit["links"]["thumbnail"] == f"/v1/collections/col/images/{hit['id']}/thumbnail"
    page2 = body(server.get("/v1/collections/col/search", fields={"q": "Corvus", "k": 4, "offset": 4}))
    both = body(server.get("/v1/collections/col/search", fields={"q": "Corvus", "k": 8}))
    assert [h["id"] for h in data["hits"] + page2["hits"]] == [h["id"] for h in both["hits"]]


def test_get_search_with_filters_taxa_terms_and_groups(server):
    fields = [("q", "bird"), ("where", "country=Kenya"), ("where", "year>=1900"), ("taxon", "Corvidae"), ("k", "20")]
    data = body(server.request("GET", "/v1/collections/col/search", fields=fields))
    assert data["hits"] and data["candidates"] == len(data["hits"])
    assert all(h["country"] == "Kenya" and h["family"] == "Corvidae" for h in data["hits"])
    terms = [("term", "text:2=Corvus"), ("term", "id=3"), ("term", "text:-0.5=juvenile")]
    combined = body(server.request("GET", "/v1/collections/col/search", fields=terms))
    assert combined["interpretation"].startswith("combination: 2 x") and 3 not in [h["id"] for h in combined["hits"]]
    grouped = body(
        server.get(
            "/v1/collections/col/search", fields={"q": "bird", "group": "similar", "group_similarity": -1, "k": 2}
        )
    )
    assert len(grouped["hits"]) == 1 and len(grouped["hits"][0]["group"]) == 15
    assert body(server.get("/v1/collections/col/search", fields={"q": "bird", "min_score": 2}))["hits"] == []


def test_post_json_terms_and_multipart_upload(server, col):
    path = col[0]
    photo = png()
    engine = SearchEngine.open(path, refresh_interval=None)
    req = {
        "terms": [
            {"kind": "text", "value": "Corvus", "weight": 2},
            {"kind": "image", "data": base64.b64encode(photo).decode(), "label": "photo.png"},
            {"kind": "vector", "value": engine.vectors([5])[0].tolist(), "weight": 0.5},
        ],
        "k": 5,
        "where": ["institutionCode=NHM"],
    }
    data = body(server.request("POST", "/v1/collections/col/search", json=req))
    assert len(data["hits"]) == 5 and all(h["institutionCode"] == "NHM" for h in data["hits"])
    assert "picture photo.png" in data["interpretation"]
    up = multipart(
        server, files=[("image", "mine.png", photo, "image/png")], fields={"k": "3", "where": "country=Kenya"}
    )
    assert up.status == 200, up.data
    got = body(up)
    want = engine.search(image=photo, k=3, filters=["country=Kenya"])
    assert [h["id"] for h in got["hits"]] == [h.id for h in want.hits]
    assert got["interpretation"].startswith("images similar to the uploaded picture mine.png")


def test_every_answer_says_its_query_kind_and_the_recall_that_applied(server, col):
    engine = SearchEngine.open(col[0], refresh_interval=None)
    want = engine.search("Corvus", k=3).to_dict()
    text = body(server.get("/v1/collections/col/search", fields={"q": "Corvus", "k": 3}))
    assert text["query_kind"] == "text" and text["recall"] == want["recall"] and text["recall"]["kind"] == "text"
    assert text["recall"]["index"] == engine.info()["index"] and text["recall"]["recall_at_10"] == 1.0
    assert text["searched_as"] == want["searched_as"] and text["searched_as"].startswith("searched as a text query")
    by_id = body(server.request("POST", "/v1/collections/col/search", json={"terms": [{"kind": "id", "value": 3}]}))
    assert by_id["query_kind"] == "image" and by_id["recall"]["kind"] == "image"
    both = body(server.get("/v1/collections/col/search", fields=[("q", "Corvus"), ("term", "id=3")]))
    assert both["query_kind"] == "mixed" and both["searched_as"].startswith("searched as a mixed query")
    similar = body(server.get("/v1/collections/col/images/2/similar", fields={"k": 2}))
    assert similar["query_kind"] == "image" and similar["recall"]["measured_on"]


def test_image_metadata_similar_taxa_and_facets(server):
    meta = body(server.get("/v1/collections/col/images/2"))
    assert meta["id"] == 2 and "score" not in meta and meta["links"]["similar"].endswith("/images/2/similar")
    assert meta["catalogNumber"].startswith("CAT-") and meta["record_images"] == []
    sim = body(server.get("/v1/collections/col/images/2/similar", fields={"k": 3, "where": "country=Kenya"}))
    assert len(sim["hits"]) == 3 and 2 not in [h["id"] for h in sim["hits"]]
    assert sim["interpretation"].startswith("images similar to image 2")
    taxa = body(server.get("/v1/collections/col/taxa", fields={"prefix": "corv"}))
    names = {t["name"] for t in taxa}
    assert {"Corvus", "Corvidae", "Corvus corax"} <= names
    corax = next(t for t in taxa if t["name"] == "Corvus corax")
    assert corax["rank"] == "species" and corax["lineage"]["family"] == "Corvidae" and corax["images"] >= 1
    assert (
        body(server.get("/v1/collections/col/taxa", fields={"prefix": "common r"}))[0]["common_name"] == "common raven"
    )
    facets = body(server.get("/v1/collections/col/facets", fields={"field": "country", "where": "institutionCode=NHM"}))
    assert facets["field"] == "country" and sum(v["images"] for v in facets["values"]) == facets["images"]
    assert body(server.get("/v1/collections/col/facets", fields={"field": "country"}))["images"] == 16


def test_thumbnails_and_files_with_etags(server, col):
    _, folder, _ = col
    t = server.get("/v1/collections/col/images/4/thumbnail", fields={"size": 64})
    assert t.status == 200 and t.headers["Content-Type"] == "image/jpeg" and t.data[:2] == b"\xff\xd8"
    assert "max-age" in t.headers["Cache-Control"] and t.headers["ETag"]
    again = server.get("/v1/collections/col/images/4/thumbnail?size=64", headers={"If-None-Match": t.headers["ETag"]})
    assert again.status == 304 and again.data == b""
    f = server.get("/v1/collections/col/images/4/file")
    meta = body(server.get("/v1/collections/col/images/4"))
    n = int(meta["catalogNumber"].split("-")[1])
    rel = next(folder.rglob(f"img_{n:04d}.png"))
    assert f.status == 200 and f.headers["Content-Type"] == "image/png" and f.data == rel.read_bytes()
    assert f.headers["ETag"] == f'"{meta["sha256"]}"' and f.headers["X-Content-Type-Options"] == "nosniff"
    assert server.get("/v1/collections/col/images/4/file", headers={"If-None-Match": f.headers["ETag"]}).status == 304


def test_html_and_markdown_in_metadata_are_plain_json_strings(server):
    hits = body(server.get("/v1/collections/col/search", fields={"q": "x", "k": 16}))["hits"]
    first = next(h for h in hits if h["catalogNumber"] == "CAT-0")
    assert first["vernacularName"] == HTML and first["locality"] == MARKDOWN
    meta = server.get("/v1/collections/col/images/" + str(first["id"]))
    assert meta.headers["Content-Type"] == "application/json"
    assert body(meta)["vernacularName"] == HTML and "&lt;" not in meta.data.decode()


def test_sql_in_filter_values_is_just_text(server):
    tricky = body(
        server.get("/v1/collections/col/search", fields={"q": "x", "where": "catalogNumber=CAT-1' OR '1'='1"})
    )
    assert [h["catalogNumber"] for h in tricky["hits"]] == ["CAT-1' OR '1'='1"]
    for value in ("country=Kenya'; DROP TABLE images; --", 'country=") OR 1=1 --', "taxon=x' UNION SELECT * --"):
        r = server.get("/v1/collections/col/search", fields={"q": "x", "where": value})
        assert r.status == 200 and body(r)["hits"] == [] and "no image matches the filters" in body(r)["notices"]
    assert err(server.get("/v1/collections/col/facets", fields={"field": 'country"; DROP TABLE images; --'})) == (
        400,
        "bad_filter",
    )
    assert body(server.get("/v1/collections"))[0]["images"] == 16  # nothing was dropped


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, fields, want",
    [
        ("/v1/collections/nope", None, (404, "unknown_collection")),
        ("/v1/collections/nope/search", {"q": "x"}, (404, "unknown_collection")),
        ("/v1/collections/col/images/99999", None, (404, "unknown_image")),
        ("/v1/collections/col/images/-1/file", None, (404, "unknown_image")),
        ("/v1/collections/col/images/99999999999999999999999/similar", None, (404, "unknown_image")),
        ("/v1/collections/col/images/abc", None, (400, "bad_request")),
        ("/v1/nothing", None, (404, "not_found")),
        ("/v1/collections/col/search", {"q": "x", "k": "many"}, (400, "bad_request")),
        ("/v1/collections/col/search", {"q": "x", "k": 101}, (400, "limit_exceeded")),
        ("/v1/collections/col/search", {"q": "x", "k": 100, "offset": 9950}, (400, "limit_exceeded")),
        ("/v1/collections/col/search", {"q": "x" * 1001}, (400, "limit_exceeded")),
        ("/v1/collections/col/search", {"q": "x", "offset": -1}, (400, "bad_request")),
        ("/v1/collections/col/search", {}, (400, "bad_query")),
        ("/v1/collections/col/search", {"q": "   "}, (400, "bad_query")),
        ("/v1/collections/col/search", {"q": "x", "where": "contry=Kenya"}, (400, "bad_filter")),
        ("/v1/collections/col/search", {"q": "x", "where": "year>=old"}, (400, "bad_filter")),
        ("/v1/collections/col/search", {"q": "x", "group": "nearby"}, (400, "bad_request")),
        ("/v1/collections/col/search", {"term": "image=/etc/passwd"}, (400, "bad_request")),
        ("/v1/collections/col/search", {"term": "colour=red"}, (400, "bad_query")),
        ("/v1/collections/col/images/1/thumbnail", {"size": "../../etc"}, (400, "bad_request")),
        ("/v1/collections/col/images/1/thumbnail", {"size": 4000}, (400, "limit_exceeded")),
        ("/v1/collections/col/facets", {"field": "location"}, (400, "bad_filter")),
        ("/v1/collections/col/taxa", {}, (400, "bad_request")),
    ],
)
def test_error_answers_are_json_with_stable_codes(server, path, fields, want):
    assert err(server.get(path, fields=fields)) == want


def test_wrong_method_and_bad_bodies(server):
    assert err(server.request("POST", "/v1/collections")) == (405, "method_not_allowed")
    s = "/v1/collections/col/search"
    assert err(server.request("POST", s, body=b"{not json", headers={"Content-Type": "application/json"})) == (
        400,
        "bad_json",
    )
    assert err(server.request("POST", s, json=[1, 2])) == (400, "bad_json")
    assert err(server.request("POST", s, json={"q": "x", "colour": "red"})) == (400, "bad_request")
    assert err(server.request("POST", s, json={"terms": [{"kind": "image", "data": "%%%"}]})) == (400, "bad_request")
    assert err(server.request("POST", s, body=b"q=x", headers={"Content-Type": "text/plain"})) == (
        415,
        "unsupported_media_type",
    )
    assert err(
        server.request(
            "POST", s, json={"terms": [{"kind": "text", "value": "a"}, {"kind": "text", "value": "a", "weight": -1}]}
        )
    ) == (400, "bad_query")


def test_uploads_that_are_not_pictures_or_are_too_big(server):
    assert err(multipart(server, files=[("image", "notes.png", b"just some text, not a picture", "image/png")])) == (
        415,
        "not_an_image",
    )
    gif = io.BytesIO()
    picture(1).save(gif, format="GIF")
    assert err(multipart(server, files=[("image", "a.gif", gif.getvalue(), "image/gif")])) == (415, "not_an_image")
    for w, h in ((9000, 9000), (40000, 40000)):  # over the 60 MP limit; over Pillow's own bomb limit
        assert err(multipart(server, files=[("image", "bomb.png", png_header_only(w, h), "image/png")])) == (
            413,
            "image_too_large",
        )
    bomb = base64.b64encode(png_header_only(40000, 40000)).decode()
    assert err(
        server.request("POST", "/v1/collections/col/search", json={"terms": [{"kind": "image", "data": bomb}]})
    ) == (
        413,
        "image_too_large",
    )
    big = os.urandom(21 * 1024 * 1024)  # over the 20 MB picture limit, within the body limit
    assert err(multipart(server, files=[("image", "big.png", big, "image/png")])) == (413, "image_too_large")
    huge = os.urandom(30 * 1024 * 1024)  # over the body limit: refused by its Content-Length
    assert err(multipart(server, files=[("image", "huge.png", huge, "image/png")])) == (413, "body_too_large")


def test_a_chunked_body_over_the_limit_is_refused(server):
    def chunks():
        for _ in range(40):
            yield b"x" * (1024 * 1024)

    r = server.request(
        "POST",
        "/v1/collections/col/search",
        body=chunks(),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        chunked=True,
    )
    assert err(r) == (413, "body_too_large")
    assert server.get("/healthz").status == 200


def test_path_traversal_and_symlinks_serve_nothing(server, col, tmp_path):
    _, folder, _ = col
    for path in (
        "/v1/collections/col/images/..%2F..%2F..%2Fetc%2Fpasswd/file",
        "/v1/collections/..%2F..%2Fetc/images/1/file",
        "/v1/collections/col/images/1/file/../../../../etc/passwd",
        "/v1/collections/col/images/1%2F..%2F..%2F2/file",
    ):
        r = server.get(path)
        assert r.status in (400, 404) and b"root:" not in r.data, path
        err(r)
    secret = tmp_path / "secret.png"
    secret.write_bytes(png(seed=99))
    target = next(folder.rglob("img_0009.png"))
    target.unlink()
    target.symlink_to(secret)  # an indexed file replaced by a link out of the source's folder
    meta = body(server.get("/v1/collections/col/search", fields={"q": "x", "k": 16}))
    nine = next(h for h in meta["hits"] if h["catalogNumber"] == "CAT-9")["id"]
    for what in ("file", "thumbnail"):
        r = server.get(f"/v1/collections/col/images/{nine}/{what}")
        assert err(r) == (404, "image_not_available") and secret.read_bytes() not in r.data


# -- the description ---------------------------------------------------------------------------


def test_openapi_describes_every_endpoint_and_the_docs_page_works_offline(server):
    spec = body(server.get("/openapi.json"))
    paths = spec["paths"]
    for p in (
        "/healthz",
        "/readyz",
        "/v1/collections",
        "/v1/collections/{name}",
        "/v1/collections/{name}/search",
        "/v1/collections/{name}/images/{image_id}",
        "/v1/collections/{name}/images/{image_id}/similar",
        "/v1/collections/{name}/images/{image_id}/thumbnail",
        "/v1/collections/{name}/images/{image_id}/file",
        "/v1/collections/{name}/taxa",
        "/v1/collections/{name}/facets",
    ):
        assert p in paths, p
    assert set(paths["/v1/collections/{name}/search"]) == {"get", "post"}
    post = paths["/v1/collections/{name}/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(post)
    assert "SearchRequest" in spec["components"]["schemas"]
    answer = spec["components"]["schemas"]["SearchResponse"]["properties"]
    assert {"query_kind", "recall", "searched_as"} <= set(answer)
    assert {"recall_at_10", "measured_on", "params"} <= set(spec["components"]["schemas"]["RecallOut"]["properties"])
    docs = server.get("/docs")
    assert docs.status == 200 and b"swagger-ui-bundle.js" in docs.data and b"cdn.jsdelivr" not in docs.data
    js = re.search(rb'src="([^"]*swagger-ui-bundle\.js)"', docs.data).group(1).decode()
    assert server.get(js).status == 200  # served from the package, not from a CDN


def test_the_access_log_has_one_line_per_request(server):
    import time

    server.get("/v1/collections/col/search", fields={"q": "access-log-probe"})
    line = r'127\.0\.0\.1 "GET /v1/collections/col/search\?q=access-log-probe HTTP/1\.1" 200 \d+B [\d.]+ms'
    deadline = time.monotonic() + 10  # the line is written once the answer has gone
    while not re.search(line, server.log()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert re.search(line, server.log())


# -- keys, CORS, rate limits ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(col):
    path, _, root = col
    keys = root / "keys.txt"
    keys.write_text(f"# portal\n{KEY}\n\n")
    keys.chmod(0o600)
    s = Server(
        [f"herbarium={path}", "--api-key-file", str(keys), "--cors-origin", ORIGIN, "--rate-limit", "8/minute"],
        log=root / "guarded.log",
    )
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


def test_api_keys_are_required_when_configured(guarded):
    assert err(guarded.get("/v1/collections")) == (401, "unauthorized")
    assert err(guarded.get("/v1/collections", headers={"X-API-Key": "wrong-key-wrong-key"})) == (401, "unauthorized")
    assert body(guarded.get("/v1/collections", headers={"X-API-Key": KEY}))[0]["name"] == "herbarium"
    assert guarded.get("/v1/collections/herbarium", headers={"Authorization": f"Bearer {KEY}"}).status == 200
    assert guarded.get("/healthz").status == 200 and guarded.get("/openapi.json").status == 200
    t = guarded.get("/v1/collections/herbarium/images/1/thumbnail", headers={"X-API-Key": KEY})
    assert t.headers["Cache-Control"].startswith("private")


def test_cors_headers_only_for_the_allowed_origin(guarded, server):
    ok = guarded.get("/v1/collections", headers={"Origin": ORIGIN, "X-API-Key": KEY})
    assert ok.headers.get("Access-Control-Allow-Origin") == ORIGIN
    other = guarded.get("/v1/collections", headers={"Origin": "https://evil.example.com", "X-API-Key": KEY})
    assert "Access-Control-Allow-Origin" not in other.headers
    pre = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
    r = guarded.request("OPTIONS", "/v1/collections/herbarium/search", headers=pre)
    assert (
        r.status == 200
        and r.headers["Access-Control-Allow-Origin"] == ORIGIN
        and "POST" in r.headers["Access-Control-Allow-Methods"]
    )
    bad = guarded.request(
        "OPTIONS", "/v1/collections/herbarium/search", headers={**pre, "Origin": "https://evil.example.com"}
    )
    assert "Access-Control-Allow-Origin" not in bad.headers
    plain = server.get("/v1/collections", headers={"Origin": ORIGIN})  # no --cors-origin: none at all
    assert "Access-Control-Allow-Origin" not in plain.headers


def test_rate_limits_per_client(guarded):
    codes = [guarded.get("/v1/collections/herbarium", headers={"X-API-Key": KEY}).status for _ in range(12)]
    assert 429 in codes and codes[0] == 200
    r = guarded.get("/v1/collections/herbarium", headers={"X-API-Key": KEY})
    assert err(r) == (429, "rate_limited") and int(r.headers["Retry-After"]) >= 1
    assert guarded.get("/healthz").status == 200  # probes are never limited


# -- operations -----------------------------------------------------------------------------------


def test_new_generations_are_served_and_sigterm_stops_gracefully(col, tiny_model_source, tmp_path):
    from click.testing import CliRunner
    from imagegen import make_folder

    from indexer.cli import index as index_cli

    path, _, root = col
    s = Server([str(path), "--rate-limit", "none"], log=tmp_path / "gen.log")
    try:
        s.wait_ready()
        before = body(s.get("/readyz"))["collections"]["col"]["generation"]
        more = make_folder(tmp_path / "more", 3, start=100)
        args = [
            "build",
            str(more),
            "--labels",
            str(more / "labels.csv"),
            "--out",
            str(path),
            "--model",
            tiny_model_source,
            "--device",
            "cpu",
            "--workers",
            "0",
        ]
        assert CliRunner().invoke(index_cli.main, args).exit_code == 0
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and body(s.get("/v1/collections"))[0]["images"] != 19:
            time.sleep(0.2)
        assert body(s.get("/v1/collections"))[0]["images"] == 19
        assert body(s.get("/readyz"))["collections"]["col"]["generation"] > before
        found = body(s.get("/v1/collections/col/search", fields={"q": "x", "k": 19, "where": "catalogNumber=CAT-101"}))
        assert (
            len(found["hits"]) == 1
            and s.get(f"/v1/collections/col/images/{found['hits'][0]['id']}/thumbnail").status == 200
        )
    finally:
        code = s.stop(signal.SIGTERM)
    assert code in (0, -signal.SIGTERM)  # uvicorn exits by the signal once it has shut down
    assert "stopped serving col" in s.log() and "Traceback" not in s.log()


# -- the README's examples -----------------------------------------------------------------------


def _readme_curls() -> list[list[str]]:
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("**Endpoints**", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line.split("  #")[0]) for line in block.splitlines() if line.startswith("curl ")]


def test_every_endpoint_has_a_readme_curl_example_that_works(server, tmp_path):
    from urllib.parse import urlsplit

    curls = _readme_curls()
    spec = body(server.get("/openapi.json"))["paths"]
    covered = set()
    for argv in curls:
        url = next(a for a in argv if a.startswith("http"))
        method = argv[argv.index("-X") + 1] if "-X" in argv else "GET"
        headers = {
            argv[i + 1].split(":")[0]: argv[i + 1].split(":", 1)[1].strip() for i, a in enumerate(argv) if a == "-H"
        }
        forms = [argv[i + 1] for i, a in enumerate(argv) if a == "-F"]
        data = argv[argv.index("-d") + 1] if "-d" in argv else None
        parts = urlsplit(url.replace("/collections/herbarium", "/collections/col"))
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        if forms:
            from urllib3 import encode_multipart_formdata

            fields = []
            for f in forms:
                name, _, value = f.partition("=")
                fields.append((name, ("photo.jpg", png(), "image/jpeg")) if value.startswith("@") else (name, value))
            payload, ctype = encode_multipart_formdata(fields)
            r = server.request("POST", target, body=payload, headers={"Content-Type": ctype})
        else:
            r = server.request(method, target, body=data.encode() if data else None, headers=headers)
        assert r.status == 200, (argv, r.status, r.data[:300])
        template = next(
            p for p in spec if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", p), parts.path.replace("herbarium", "col"))
        )
        covered.add((template, "post" if forms or method == "POST" else "get"))
    documented = {(p, m) for p, methods in spec.items() for m in methods}
    assert documented <= covered, documented - covered
