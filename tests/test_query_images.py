"""Query pictures must be regular files within a size limit: devices, FIFOs, folders and huge
files are clear errors, raised before anything is read (or the model loaded)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from imagegen import make_folder, picture

from indexer.build import BuildOptions, build
from indexer.build.sources import FolderSource
from indexer.cli import search as search_cli
from indexer.errors import QueryError
from indexer.search import SearchEngine, Term


@pytest.fixture(scope="module")
def col(tmp_path_factory, tiny_model_source):
    tmp = tmp_path_factory.mktemp("query-images")
    folder = make_folder(tmp / "imgs", 6)
    build(tmp / "col", [FolderSource(folder)], model_name=tiny_model_source, options=BuildOptions(workers=0))
    picture(42, (300, 200)).save(tmp / "photo.png")
    return tmp / "col", tmp


def _cli(*args):
    return CliRunner().invoke(search_cli.main, [str(a) for a in args])


def test_a_device_is_refused_by_the_cli_in_every_kind_of_image_term(col):
    path, _ = col
    for args in (
        ["--image", "/dev/zero"],
        ["Corvus", "--minus-image", "/dev/zero"],
        ["--term", "image:2=/dev/zero"],
        ["Corvus", "--term", "vector=/dev/zero"],
    ):
        r = _cli(path, *args)
        assert r.exit_code == 1, (args, r.output)
        assert "/dev/zero is a device, not a file" in r.stderr and "Traceback" not in r.output, args


def test_a_fifo_is_refused_without_waiting_for_a_writer(col, tmp_path):
    path, _ = col
    fifo = tmp_path / "query.jpg"
    os.mkfifo(fifo)
    # A separate process: reading a FIFO that nobody writes would block forever.
    done = subprocess.run(
        [sys.executable, "-c", "from indexer.cli.search import main; main()", str(path), "--image", str(fifo)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert done.returncode == 1, done.stderr
    assert f"the image {fifo} is a FIFO, not a file: give a picture file" in done.stderr


def test_the_python_api_refuses_folders_devices_and_files_over_the_limit(col, tiny_model_source):
    path, tmp = col
    engine = SearchEngine.open(path, max_image_bytes=4096)
    assert not engine.model_loaded
    with pytest.raises(QueryError, match="is a folder"):
        engine.search(image=str(tmp))
    with pytest.raises(QueryError, match="is a device"):
        engine.search(query=Term.text("Corvus") + Term.image("/dev/zero"))
    big = tmp / "big.jpg"
    rng = np.random.default_rng(0)
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(big, quality=95)
    assert big.stat().st_size > 4096
    with pytest.raises(QueryError, match="larger than the 0.00390625 MB"):
        engine.search(image=big)
    with pytest.raises(QueryError, match="query pictures up to"):
        engine.search(image=big.read_bytes())
    assert not engine.model_loaded  # refused before the model was needed
    # within the limit, a path and the same bytes give the same vector
    roomy = SearchEngine.open(path)
    photo = tmp / "photo.png"
    np.testing.assert_allclose(roomy.embed_image(photo), roomy.embed_image(photo.read_bytes()), atol=1e-6)
    assert roomy.search(image=str(photo), k=2).hits
