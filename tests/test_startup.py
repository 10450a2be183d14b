"""A build or query pays only for what it uses: checked in fresh processes, as a user runs them.

- A rebuild with nothing to do neither loads the model (torch is never imported) nor writes a
  new generation.
- Refusing another model for an existing collection comes before torch is imported.
- A collection whose model revision is pinned makes no network calls, even without HF_HUB_OFFLINE.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from imagegen import make_folder

ROOT = Path(__file__).resolve().parents[1]

# Runs a console script's main() in this interpreter and reports whether torch was imported.
_RUN = """
import json, sys
from importlib import import_module
module, args = sys.argv[1], sys.argv[2:]
code = 0
try:
    import_module(module).main(args, standalone_mode=False)
except SystemExit as exc:
    code = exc.code
except Exception as exc:
    code = type(exc).__name__ + ": " + str(exc)
print(json.dumps({"torch": "torch" in sys.modules, "open_clip": "open_clip" in sys.modules, "code": code}))
"""


def _run(module: str, *args: str, env: dict | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _RUN, module, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "stderr": out.stderr}


def _generations(col: Path) -> list[str]:
    return sorted(p.name for p in (col / "generations").iterdir())


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_source):
    tmp = tmp_path_factory.mktemp("startup")
    folder = make_folder(tmp / "imgs", 6)
    col = tmp / "col"
    from indexer.build import BuildOptions, build
    from indexer.build.sources import open_source

    build(col, [open_source(str(folder))], model_name=tiny_model_source, options=BuildOptions(workers=0))
    return folder, col


def test_a_rebuild_with_nothing_to_do_loads_no_model_and_writes_no_generation(built):
    folder, col = built
    before = _generations(col)
    result = _run("indexer.cli.index", "build", str(folder), "--out", str(col), "--workers", "0", "-q")
    assert result["code"] in (0, None), result
    assert not result["torch"], "a no-op rebuild imported torch (it loaded the model)"
    assert _generations(col) == before


def test_a_rebuild_with_new_images_loads_the_model_and_commits(built, tmp_path, tiny_model_source):
    folder, col = built
    import shutil

    copy_col = tmp_path / "col"
    shutil.copytree(col, copy_col)
    make_folder(folder.parent / "more", 2, start=100)
    before = _generations(copy_col)
    result = _run("indexer.cli.index", "build", str(folder.parent / "more"), "--out", str(copy_col), "--workers", "0")
    assert result["code"] in (0, None), result
    assert result["torch"] and len(_generations(copy_col)) > len(before)


def test_another_model_is_refused_before_torch_is_imported(built, tmp_path):
    folder, col = built
    from bioclip.testing import write_random_model

    other = write_random_model(tmp_path / "other", seed=1)
    result = _run("indexer.cli.index", "build", str(folder), "--out", str(col), "--model", f"local-dir:{other}")
    assert "ModelMismatchError" in str(result["code"]) or "built with model" in str(result["code"]), result
    assert not result["torch"], "the model mismatch was found only after torch was imported"


class _CountingHub(http.server.BaseHTTPRequestHandler):
    """Stands in for the Hugging Face hub: counts every request and answers 503."""

    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.requests.append(self.path)
        self.send_response(503)
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hub():
    _CountingHub.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _CountingHub.requests
    finally:
        server.shutdown()
        server.server_close()


def test_a_pinned_revision_makes_no_network_calls(tmp_path, tiny_model_dir, hub):
    """Built from a Hugging Face model (its commit recorded), searched with the network allowed:
    the recorded commit is in the cache, so the hub is never asked."""
    from bioclip.testing import write_fake_hf_cache

    endpoint, requests = hub
    cache = tmp_path / "hf"
    snapshot = write_fake_hf_cache(cache, "imageomics/bioclip", tiny_model_dir)
    folder = make_folder(tmp_path / "imgs", 4)
    col = tmp_path / "col"
    offline = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    built = _run("indexer.cli.index", "build", str(folder), "--out", str(col), "--model", "bioclip", env=offline)
    assert built["code"] in (0, None), built
    assert json.loads((col / "collection.json").read_text())["model"]["revision"] == snapshot.name

    online = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": endpoint, "HF_HUB_ETAG_TIMEOUT": "2"}
    found = _run("indexer.cli.search", str(col), "a photo of Corvus corax.", "--json", env=online)
    assert found["code"] in (0, None), found
    assert found["torch"]  # the model did load
    assert requests == [], f"the hub was asked: {requests}"


@pytest.mark.parametrize("units, expected", [("yes", "bf16"), ("no", "fp32")])
def test_the_build_and_its_queries_use_the_machines_precision(
    tmp_path, tiny_model_source, monkeypatch, units, expected
):
    """``auto`` picks each branch when the detection is forced; the collection and the build record
    it; a query of the collection encodes text and images at the same precision."""
    monkeypatch.setenv("BIOCLIP_CPU_BF16", units)
    monkeypatch.setenv("BIOCLIP_SEARCH_CACHE", str(tmp_path / "cache"))
    from indexer.build import BuildOptions, build
    from indexer.build.sources import open_source
    from indexer.search.engine import SearchEngine

    folder = make_folder(tmp_path / "imgs", 4)
    report = build(
        tmp_path / "col", [open_source(str(folder))], model_name=tiny_model_source, options=BuildOptions(workers=0)
    )
    assert report.precision == expected
    assert json.loads((tmp_path / "col" / "collection.json").read_text())["model"]["precision"] == expected
    engine = SearchEngine.open(tmp_path / "col", device="cpu", refresh_interval=None)
    assert engine.info()["last_build"]["precision"] == expected
    assert engine.model.precision == expected
    hits = engine.search("a photo of Corvus corax.", k=2).hits
    assert len(hits) == 2
