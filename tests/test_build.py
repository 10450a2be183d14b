"""The build pipeline end to end on generated folders with the tiny model."""

from __future__ import annotations

import os

import numpy as np
import pytest
from imagegen import make_folder, picture
from PIL import Image

from indexer.build import BuildOptions, build
from indexer.build.sources import FolderSource
from indexer.errors import ModelMismatchError
from indexer.search.engine import SearchEngine
from indexer.store import Collection


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from bioclip.testing import write_random_model

    return write_random_model(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="module")
def model(tiny):
    from bioclip import load_model

    return load_model(f"local-dir:{tiny}", device="cpu")


def _build(col, folder, model, **opts):
    src = FolderSource(folder, labels=folder / "labels.csv" if (folder / "labels.csv").exists() else None)
    return build(col, [src], model=model, options=BuildOptions(**{"workers": 0, **opts}))


def _stored(col_path):
    snap = Collection.open(col_path).snapshot()
    ids, vecs = snap.load_vectors()
    con = snap.connect()
    loc = dict(con.execute("SELECT id, location FROM images").fetchall())
    return {loc[i]: v for i, v in zip(ids.tolist(), vecs)}


def test_stored_vectors_equal_a_plain_open_clip_encode(tmp_path, tiny, model):
    import open_clip
    import torch
    from torchvision import transforms as T

    folder = make_folder(tmp_path / "imgs", 12)
    # Different sizes and modes than the generator's default, to exercise the preprocessing.
    picture(100, (640, 300)).save(folder / "a" / "wide.jpg", quality=95)
    picture(101, (50, 400)).convert("RGBA").save(folder / "b" / "tall.png")
    report = _build(tmp_path / "col", folder, model, workers=1)
    assert report.encoded == 14 and report.failed == 0

    ref, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tiny}")
    ref.eval()
    cfg = model.preprocess_config
    pre = T.Compose([T.ToTensor(), T.Resize((224, 224), antialias=True), T.Normalize(cfg.mean, cfg.std)])
    stored = _stored(tmp_path / "col")
    for path in sorted(folder.rglob("*")):
        if path.suffix not in (".png", ".jpg"):
            continue
        img = Image.open(path)
        if img.mode == "RGBA":  # alpha composited on white, as the decoder does
            bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(bg, img)
        with torch.no_grad():
            v = ref.encode_image(pre(img.convert("RGB")).unsqueeze(0))[0].numpy()
        v /= np.linalg.norm(v)
        cos = float(v @ stored[str(path)] / np.linalg.norm(stored[str(path)]))
        assert cos >= 0.9999, (path.name, cos)


def test_every_image_finds_itself_first_and_ann_equals_brute_force(tmp_path, model):
    folder = make_folder(tmp_path / "imgs", 30)
    _build(tmp_path / "col", folder, model)
    engine = SearchEngine.open(tmp_path / "col", model=model)
    assert engine.info()["index"] is not None
    snap = Collection.open(tmp_path / "col").snapshot()
    ids, vecs = snap.load_vectors()
    con = snap.connect()
    loc = dict(con.execute("SELECT location, id FROM images").fetchall())
    for path, id_ in loc.items():
        res = engine.search(image=path, k=5)
        assert res.hits[0].id == id_
        assert res.hits[0].score == pytest.approx(1.0, abs=2e-3)
    # The engine's k-NN (ANN index + delta) equals brute force over the stored vectors.
    queries = vecs[:7] + 0.05 * np.random.default_rng(0).normal(size=vecs[:7].shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores, found = engine.knn(queries, 10)
    sims = queries @ vecs.T
    order = np.argsort(-sims, axis=1)[:, :10]
    np.testing.assert_array_equal(found, ids[order])
    np.testing.assert_allclose(scores, np.take_along_axis(sims, order, axis=1), atol=1e-5)


def test_rebuild_encodes_nothing_and_new_images_only(tmp_path, model):
    folder = make_folder(tmp_path / "imgs", 10)
    first = _build(tmp_path / "col", folder, model)
    assert first.encoded == 10
    again = _build(tmp_path / "col", folder, model)
    assert (again.encoded, again.reused, again.unchanged) == (0, 0, 10)
    make_folder(folder, 3, start=10)
    more = _build(tmp_path / "col", folder, model)
    assert more.encoded == 3 and more.unchanged == 10
    assert Collection.open(tmp_path / "col").latest_generation().images == 13


def test_changed_renamed_and_pruned_files(tmp_path, model):
    folder = make_folder(tmp_path / "imgs", 6, labels=False)
    _build(tmp_path / "col", folder, model)
    before = _stored(tmp_path / "col")
    # changed content: re-encoded, old vector retired
    picture(999).save(folder / "a" / "img_0000.png")
    # renamed: reused by content hash, not encoded
    os.rename(folder / "b" / "img_0001.png", folder / "b" / "renamed.png")
    r = _build(tmp_path / "col", folder, model)
    assert r.encoded == 1 and r.reused == 1 and r.replaced == 1
    after = _stored(tmp_path / "col")
    np.testing.assert_allclose(after[str(folder / "b" / "renamed.png")], before[str(folder / "b" / "img_0001.png")])
    assert str(folder / "b" / "img_0001.png") in after  # not pruned without --prune
    r = _build(tmp_path / "col", folder, model, prune=True)
    assert r.pruned == 1 and r.encoded == 0
    after = _stored(tmp_path / "col")
    assert str(folder / "b" / "img_0001.png") not in after and len(after) == 6


def test_edited_labels_update_metadata_without_encoding(tmp_path, model):
    folder = make_folder(tmp_path / "imgs", 5)
    _build(tmp_path / "col", folder, model)
    text = (folder / "labels.csv").read_text().replace("CAT-3,", "CAT-3-FIXED,")
    (folder / "labels.csv").write_text(text)
    r = _build(tmp_path / "col", folder, model)
    assert r.metadata_updated == 1 and r.encoded == 0
    con = Collection.open(tmp_path / "col").snapshot().connect()
    assert con.execute("SELECT count(*) FROM images WHERE \"catalogNumber\" = 'CAT-3-FIXED'").fetchall()[0][0] == 1
    assert con.execute("SELECT count(*) FROM images").fetchall()[0][0] == 5


def test_bad_files_are_recorded_and_everything_else_indexed(tmp_path, model):
    folder = make_folder(tmp_path / "imgs", 5, labels=False)
    good = folder / "a" / "img_0000.png"
    data = (folder / "a" / "img_0002.png").read_bytes()
    (folder / "truncated.jpg").write_bytes(_jpeg_bytes()[:600])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("field notes, not a picture\n")
    assert good.exists() and data
    r = _build(tmp_path / "col", folder, model, workers=1)
    assert r.encoded == 5
    assert r.failed_by_reason == {"truncated": 1, "empty-file": 1, "not-an-image": 1}
    engine = SearchEngine.open(tmp_path / "col", model=model)
    failures = {os.path.basename(f["location"]): f["reason"] for f in engine.failures()}
    assert failures == {"truncated.jpg": "truncated", "empty.jpg": "empty-file", "notes.jpg": "not-an-image"}
    # Known failures are not retried on the next run; the collection keeps listing them.
    r2 = _build(tmp_path / "col", folder, model)
    assert r2.encoded == 0 and r2.skipped_failed == 3
    assert len(SearchEngine.open(tmp_path / "col", model=model).failures()) == 3


def _jpeg_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    picture(7, (400, 300)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_another_model_is_refused_before_loading(tmp_path, model, tiny):
    from bioclip.testing import write_random_model

    folder = make_folder(tmp_path / "imgs", 2)
    _build(tmp_path / "col", folder, model)
    other = write_random_model(tmp_path / "other", seed=1)
    with pytest.raises(ModelMismatchError, match="cannot be mixed"):
        build(tmp_path / "col", [FolderSource(folder)], model_name=f"local-dir:{other}")
    with pytest.raises(ModelMismatchError):
        build(tmp_path / "col", [FolderSource(folder)], model_name="bioclip-2")
    # Without --model, the collection's own model is loaded (same source) and nothing is encoded.
    r = build(tmp_path / "col", [FolderSource(folder, labels=folder / "labels.csv")], options=BuildOptions(workers=0))
    assert r.encoded == 0 and r.unchanged == 2


def test_a_changed_file_that_no_longer_reads_is_listed_and_its_old_vector_retired(tmp_path, model):
    folder = make_folder(tmp_path / "imgs", 4, labels=False)
    _build(tmp_path / "col", folder, model)
    broken = folder / "a" / "img_0000.png"
    broken.write_bytes(broken.read_bytes()[:300])  # overwritten with a truncated copy
    r = _build(tmp_path / "col", folder, model)
    assert r.replaced_by_failure == 1 and r.failed == 1 and r.encoded == 0
    engine = SearchEngine.open(tmp_path / "col", model=model)
    assert [f["location"] for f in engine.failures()] == [str(broken)]
    assert str(broken) not in _stored(tmp_path / "col") and len(_stored(tmp_path / "col")) == 3
    # the next run does not decode it again; fixing the file indexes it
    r = _build(tmp_path / "col", folder, model)
    assert r.skipped_failed == 1 and r.failed == 0
    picture(0).save(broken)
    r = _build(tmp_path / "col", folder, model)
    assert r.encoded + r.reused == 1 and len(_stored(tmp_path / "col")) == 4
    assert SearchEngine.open(tmp_path / "col", model=model).failures() == []


def test_prune_clears_the_failures_of_files_that_are_gone(tmp_path, model):
    folder = make_folder(tmp_path / "imgs", 3, labels=False)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a picture")
    _build(tmp_path / "col", folder, model)
    assert Collection.open(tmp_path / "col").latest_generation().failed == 2
    (folder / "empty.jpg").unlink()
    r = _build(tmp_path / "col", folder, model)  # without --prune the failure stays listed
    assert Collection.open(tmp_path / "col").latest_generation().failed == 2
    r = _build(tmp_path / "col", folder, model, prune=True)
    assert r.pruned_failures == 1
    engine = SearchEngine.open(tmp_path / "col", model=model)
    assert [os.path.basename(f["location"]) for f in engine.failures()] == ["notes.jpg"]
    assert Collection.open(tmp_path / "col").latest_generation().failed == 1
    # a file of that name that comes back is indexed as new
    picture(5).save(folder / "empty.jpg", format="JPEG")
    r = _build(tmp_path / "col", folder, model)
    assert r.encoded + r.reused == 1


def test_rehash_finds_new_content_behind_an_unchanged_size_and_time(tmp_path, model):
    folder = make_folder(tmp_path / "imgs", 3, labels=False)
    img = folder / "a" / "img_0000.png"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(img, format="BMP")
    _build(tmp_path / "col", folder, model)
    before = _stored(tmp_path / "col")[str(img)]
    st = img.stat()
    Image.new("RGB", (64, 48), (10, 10, 200)).save(img, format="BMP")  # same size in bytes
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert img.stat().st_size == st.st_size
    r = _build(tmp_path / "col", folder, model)
    assert r.unchanged == 3 and r.encoded == 0  # size and time cannot tell
    r = _build(tmp_path / "col", folder, model, rehash=True)
    assert r.rehashed == 3 and r.encoded == 1 and r.replaced == 1 and r.unchanged == 2
    after = _stored(tmp_path / "col")[str(img)]
    assert float(np.dot(before, after)) < 0.9999
    r = _build(tmp_path / "col", folder, model, rehash=True)
    assert r.encoded == 0 and r.unchanged == 3


def test_a_locked_collection_is_refused_before_the_model_loads(tmp_path, model, monkeypatch):
    from indexer.build import target
    from indexer.errors import CollectionLockedError

    folder = make_folder(tmp_path / "imgs", 2)
    _build(tmp_path / "col", folder, model)

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the lock was taken")

    monkeypatch.setattr(target, "load_collection_model", no_loading)
    with Collection.open(tmp_path / "col").writer(), pytest.raises(CollectionLockedError, match="another indexer"):
        build(tmp_path / "col", [FolderSource(folder)], options=BuildOptions(workers=0))


def test_cpu_decode_workers_yield_to_the_encoder(tmp_path, model, monkeypatch):
    """On a CPU build the decode workers run at low priority (the encoder's threads run in lockstep:
    a worker taking one of their cores stalls them all); the images are still all encoded."""
    import indexer.build.local as local

    seen = tmp_path / "niceness"
    real = local.process_item

    def recording(*args, **kwargs):
        with open(seen, "a") as f:  # the worker is a forked child: it inherits this patch
            f.write(f"{os.getpid()} {os.nice(0)}\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(local, "process_item", recording)
    folder = make_folder(tmp_path / "imgs", 6)
    report = _build(tmp_path / "col", folder, model, workers=1)
    assert report.encoded == 6
    rows = [line.split() for line in seen.read_text().splitlines()]
    assert len(rows) == 6
    assert {pid for pid, _ in rows} != {str(os.getpid())}  # decoded in a worker, not here
    assert {int(n) for _, n in rows} == {min(19, os.nice(0) + local.CPU_WORKER_NICENESS)}
    assert os.nice(0) < local.CPU_WORKER_NICENESS  # this process kept its priority


_TURNS_SCRIPT = """
import functools, json, sys, time
from pathlib import Path
import indexer.build.executor as executor
import indexer.build.local as local
from bioclip import load_model
from imagegen import make_folder
from indexer.build import BuildOptions, build
from indexer.build.sources import FolderSource

tiny, work, gated = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
model = load_model(f"local-dir:{tiny}", device="cpu")
starts, windows = work / "starts", []
real_item, real_encode = local.process_item, model.encode_image_tensors

def recording_item(*args, **kwargs):
    with open(starts, "a") as f:  # in the forked worker: the clock is the machine's
        f.write(f"{time.monotonic()}\\n")
    time.sleep(0.02)  # a slow picture
    return real_item(*args, **kwargs)

def slow_encode(tensors):
    t0 = time.monotonic()
    time.sleep(0.08)  # a long forward pass: time for an ungated worker to decode beside it
    out = real_encode(tensors)
    windows.append((t0, time.monotonic()))
    return out

local.process_item = recording_item
model.encode_image_tensors = slow_encode
executor.LocalExecutor = functools.partial(local.LocalExecutor, gate_decoding=gated)
folder = make_folder(work / "imgs", 24)
report = build(work / "col", [FolderSource(folder)], model=model, options=BuildOptions(workers=1, batch_size=4))
print(json.dumps({"encoded": report.encoded, "windows": windows}))
"""


@pytest.mark.parametrize("gated", [True, False])
def test_cpu_decoders_take_turns_with_the_encoder(tmp_path, tiny, gated):
    """On a CPU the decode workers decode only while the encoder is not running (its threads run in
    lockstep: a decoder beside them stalls them all); ungated (the control), they overlap. The build
    runs in a fresh process, as the command does (forking this test process, with the threads earlier
    tests left in it, is not what a user's build does)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-c", _TURNS_SCRIPT, str(tiny), str(tmp_path), "1" if gated else "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    windows = out["windows"]
    assert out["encoded"] == 24 and len(windows) == 6
    begun = [float(t) for t in (tmp_path / "starts").read_text().split()]
    assert len(begun) == 24
    # An item a worker had begun when the gate closed may finish; none begins inside a window.
    inside = [t for t in begun for a, b in windows if a + 0.03 < t < b]
    assert (not inside) if gated else inside


_SHARER_SCRIPT = r"""
import socket, struct, sys, time
from multiprocessing import resource_sharer

if sys.argv[1] == "worker":
    from indexer.build.local import _worker_init

    _worker_init(0)
with open(sys.executable, "rb") as f:
    dup = resource_sharer.DupFd(f.fileno())  # starts the sharer's listener thread, as a tensor hand-off does
address, _key = dup._id
for reset in (False, True):
    # The build process connects and goes away mid-handshake (SIGTERM, Ctrl-C): EOF, then a reset.
    s = socket.socket(socket.AF_UNIX)
    s.connect(address)
    if reset:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    time.sleep(0.3)
print("served", flush=True)
"""


@pytest.mark.parametrize("as_worker", [True, False])
def test_a_decode_worker_says_nothing_when_the_build_hangs_up_mid_hand_off(as_worker):
    """A worker hands its tensors over through multiprocessing's resource sharer, a thread that reports
    a dropped connection through ``sys.excepthook``; in a decode worker that is quiet (it printed a
    traceback under a SIGTERM'd build in CI). The control, a plain process, shows the traceback."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _SHARER_SCRIPT, "worker" if as_worker else "plain"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "served" in done.stdout, done.stderr[-3000:]
    if as_worker:
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
    else:
        assert "resource_sharer.py" in done.stderr
        assert any(e in done.stderr for e in ("EOFError", "ConnectionResetError", "BrokenPipeError")), done.stderr


@pytest.mark.parametrize("workers", [0, 1])
def test_device_jpeg_decoding_indexes_the_same_images_as_cpu_decoding(tmp_path, model, workers):
    """--gpu-decode: the workers hand plain JPEGs on undecoded and the build process decodes them
    in batches on the model's device (here the CPU: torchvision's batch decode, the same code path
    as nvJPEG); PNGs, EXIF-rotated JPEGs and broken files go through the CPU decoder as always."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, size in enumerate([(640, 480), (300, 500), (400, 400)]):
        picture(200 + i, size).save(folder / f"photo_{i}.jpg", quality=92)
    picture(203, (500, 350)).save(folder / "progressive.jpg", quality=90, progressive=True)
    picture(204, (256, 300)).save(folder / "drawing.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    picture(205, (480, 320)).save(folder / "rotated.jpg", quality=92, exif=exif.tobytes())
    (folder / "truncated.jpg").write_bytes(_jpeg_bytes()[:600])
    (folder / "notes.jpg").write_text("field notes, not a picture\n")
    cpu = _build(tmp_path / "cpu", folder, model, workers=workers, build_index=False)
    dev = _build(tmp_path / "dev", folder, model, workers=workers, gpu_decode=True, build_index=False)
    assert cpu.decoded_on_device == 0
    assert dev.decoded_on_device == 4  # the three plain JPEGs and the progressive one
    from indexer.cli.index.build import format_report

    assert "decoded     4 JPEGs in batches on the model's device" in format_report(dev)
    assert "decoded  " not in format_report(cpu)
    assert dev.encoded == cpu.encoded == 6
    assert dev.failed_by_reason == cpu.failed_by_reason == {"truncated": 1, "not-an-image": 1}
    a, b = _stored(tmp_path / "cpu"), _stored(tmp_path / "dev")
    assert a.keys() == b.keys()
    for loc in a:
        # Resized by torchvision on the device instead of PIL: the same picture, not the same bits.
        assert float(a[loc] @ b[loc]) > 0.98, loc
    rows = dict(
        Collection.open(tmp_path / "dev").snapshot().connect().execute("SELECT location, width FROM images").fetchall()
    )
    assert rows[str(folder / "photo_1.jpg")] == 300 and rows[str(folder / "rotated.jpg")] == 320
