"""Shared fixtures: a tiny random-weight open_clip model folder, made once per test session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Tests never touch the network, and must not pick up a developer's real model cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# bioclip-search searches in-process in tests unless a test asks for its background server (and then
# in a folder of the test's own, never the user's).
os.environ["BIOCLIP_SEARCH_NO_SERVER"] = "1"
os.environ.pop("BIOCLIP_SEARCH_SERVER", None)
# Precision decisions (bioclip/precision.py) are cached here, never in the user's own cache.
os.environ["BIOCLIP_SEARCH_CACHE"] = tempfile.mkdtemp(prefix="bioclip-test-cache-")
atexit.register(shutil.rmtree, os.environ["BIOCLIP_SEARCH_CACHE"], True)
# Builds export their model's text tower for fast text queries (tens of seconds, once per model);
# only the tests of that feature (tests/test_text_onnx.py) turn it on.
os.environ["BIOCLIP_TEXT_ENCODER"] = "off"

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Folder with a tiny random open_clip model; load it as ``local-dir:{path}``."""
    from bioclip.testing import write_random_model

    return write_random_model(tmp_path_factory.mktemp("tiny-model") / "tiny")


@pytest.fixture(scope="session")
def tiny_model_source(tiny_model_dir) -> str:
    return f"local-dir:{tiny_model_dir}"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data when present; tests that need it skip cleanly otherwise."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def curate_model(tiny_model_source):
    """The tiny model, loaded once for the curation tests."""
    from bioclip import load_model

    return load_model(tiny_model_source, device="cpu")


@pytest.fixture(scope="session")
def curated_bed(tmp_path_factory, curate_model):
    """The curation test bed (tests/curatebed.py), curated once per session; tests that change it
    work on a copy."""
    from curatebed import build_bed

    from indexer.curate import curate

    bed = build_bed(tmp_path_factory.mktemp("curate"), curate_model)
    report = curate(bed.path, model=curate_model)
    assert report.full and report.images == len(bed.uuids) and report.labels == 24
    return bed
