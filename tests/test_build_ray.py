"""The Ray executor on a real local Ray cluster (2 CPUs) with the tiny model: same images, same
vectors and same failures as the local executor; the work stream is consumed lazily; set-up
problems are named errors."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pytest
from imagegen import make_folder, picture

from indexer.build import BuildOptions, build
from indexer.build.sources import FolderSource
from indexer.search.engine import SearchEngine
from indexer.store import Collection

# Ray Data's own DataContext copies warn about its deprecated fields.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")
# A Ray pipeline that waits for input it will never get hangs rather than fails: bound it.
ray_timeout = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray of its own (never one found on this machine), shut down after the module."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    if ray.is_initialized():
        ray.shutdown()
    # A short temp dir: Ray's socket paths must fit in 107 bytes, pytest's tmp paths may not.
    temp_dir = tempfile.mkdtemp(prefix="ray-")
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=300 * 1024 * 1024,
        _temp_dir=temp_dir,
        configure_logging=False,
        log_to_driver=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from bioclip import load_model

    return load_model(f"local-dir:{tiny_model_dir}", device="cpu")


def _source(folder):
    return FolderSource(folder, labels=folder / "labels.csv" if (folder / "labels.csv").exists() else None)


def _stored(col_path) -> dict[str, np.ndarray]:
    snap = Collection.open(col_path).snapshot()
    ids, vecs = snap.load_vectors()
    loc = dict(snap.connect().execute("SELECT id, location FROM images").fetchall())
    return {loc[i]: v for i, v in zip(ids.tolist(), vecs)}


def _failures(col_path, model) -> dict[str, str]:
    engine = SearchEngine.open(col_path, model=model)
    return {os.path.basename(f["location"]): f["reason"] for f in engine.failures()}


def _truncated_jpeg() -> bytes:
    import io

    buf = io.BytesIO()
    picture(7, (400, 300)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()[:600]


@ray_timeout
def test_ray_build_equals_local_build(tmp_path, ray_cluster, model):
    folder = make_folder(tmp_path / "imgs", 14)
    picture(100, (640, 300)).save(folder / "a" / "wide.jpg", quality=95)
    picture(101, (50, 400)).convert("RGBA").save(folder / "b" / "tall.png")
    (folder / "truncated.jpg").write_bytes(_truncated_jpeg())
    (folder / "notes.jpg").write_text("field notes, not a picture\n")

    local = build(tmp_path / "local", [_source(folder)], model=model, options=BuildOptions(workers=0))
    ray_opts = BuildOptions(executor="ray", commit_every=5)  # several commits from Ray's results
    r = build(tmp_path / "ray", [_source(folder)], model=model, options=ray_opts)

    assert (r.encoded, r.failed_by_reason) == (local.encoded, local.failed_by_reason)
    assert r.encoded == 16 and r.failed_by_reason == {"truncated": 1, "not-an-image": 1}
    a, b = _stored(tmp_path / "local"), _stored(tmp_path / "ray")
    assert set(a) == set(b) and len(b) == 16
    for loc, v in a.items():
        cos = float(v @ b[loc] / (np.linalg.norm(v) * np.linalg.norm(b[loc])))
        assert cos >= 0.9999, (loc, cos)
    assert (
        _failures(tmp_path / "ray", model)
        == _failures(tmp_path / "local", model)
        == {
            "truncated.jpg": "truncated",
            "notes.jpg": "not-an-image",
        }
    )
    # Metadata travels with the right vector: the same rows, labels included.
    con_a = Collection.open(tmp_path / "local").snapshot().connect()
    con_b = Collection.open(tmp_path / "ray").snapshot().connect()
    q = "SELECT location, sha256, width, height, catalogNumber, scientificName FROM images ORDER BY location"
    assert con_a.execute(q).fetchall() == con_b.execute(q).fetchall()

    # Resumable and incremental as with the local executor: nothing again, then only the new images.
    again = build(tmp_path / "ray", [_source(folder)], model=model, options=ray_opts)
    assert (again.encoded, again.unchanged, again.skipped_failed) == (0, 16, 2)
    make_folder(folder, 3, start=14)
    more = build(tmp_path / "ray", [_source(folder)], model=model, options=ray_opts)
    assert more.encoded == 3 and Collection.open(tmp_path / "ray").latest_generation().images == 19


def _device_decode_folder(folder):
    """Plain, progressive, PNG, EXIF-rotated, truncated and not-an-image files (as the local
    executor's device-decoding test has)."""
    from PIL import Image

    folder.mkdir()
    for i, size in enumerate([(640, 480), (300, 500), (400, 400)]):
        picture(200 + i, size).save(folder / f"photo_{i}.jpg", quality=92)
    picture(203, (500, 350)).save(folder / "progressive.jpg", quality=90, progressive=True)
    picture(204, (256, 300)).save(folder / "drawing.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    picture(205, (480, 320)).save(folder / "rotated.jpg", quality=92, exif=exif.tobytes())
    (folder / "truncated.jpg").write_bytes(_truncated_jpeg())
    (folder / "notes.jpg").write_text("field notes, not a picture\n")
    return folder


@ray_timeout
def test_ray_device_decoding_indexes_the_same_images_as_cpu_decoding(tmp_path, ray_cluster, model):
    """--gpu-decode with --executor ray: the read tasks hand plain JPEGs on undecoded and the
    encoder actors decode them in batches on their device (here the CPU: torchvision's batch
    decoder, nvJPEG's code path); the rest is decoded in the read tasks as always."""
    folder = _device_decode_folder(tmp_path / "imgs")
    local = build(tmp_path / "local", [_source(folder)], model=model, options=BuildOptions(workers=0))
    opts = BuildOptions(executor="ray", gpu_decode=True, commit_every=3)
    r = build(tmp_path / "ray", [_source(folder)], model=model, options=opts)
    assert r.decoded_on_device == 4  # the three plain JPEGs and the progressive one
    assert (
        (r.encoded, r.failed_by_reason)
        == (local.encoded, local.failed_by_reason)
        == (6, {"truncated": 1, "not-an-image": 1})
    )
    assert _failures(tmp_path / "ray", model) == _failures(tmp_path / "local", model)
    a, b = _stored(tmp_path / "local"), _stored(tmp_path / "ray")
    assert a.keys() == b.keys()
    for loc in a:
        # Resized by torchvision instead of PIL: the same picture, not the same bits.
        assert float(a[loc] @ b[loc]) > 0.98, loc
    q = "SELECT location, sha256, width, height FROM images ORDER BY location"
    con_a = Collection.open(tmp_path / "local").snapshot().connect()
    con_b = Collection.open(tmp_path / "ray").snapshot().connect()
    assert con_a.execute(q).fetchall() == con_b.execute(q).fetchall()


@ray_timeout
def test_device_decoding_streams_small_jpegs_through_a_small_window(tmp_path, ray_cluster, model, monkeypatch):
    """Blocks of JPEG bytes weigh far less than blocks of decoded tensors: each must still go on
    as soon as it is decoded (padded to DEVICE_ROW_FLOOR a row), or the read tasks would sit on
    the driver's whole in-flight window and the run would wait forever."""
    import indexer.build.ray.driver as rx

    real_plan = rx.plan

    def small_plan(resources, **kw):
        p = real_plan(resources, **kw)
        return rx.RayPlan(**{**p.__dict__, "in_flight": 12, "decode_rows": 3, "batch_size": 4})

    monkeypatch.setattr(rx, "plan", small_plan)
    paths = []
    for i in range(40):  # ~1 KB each
        picture(400 + i, (120, 90)).save(tmp_path / f"small_{i:02d}.jpg", quality=85)
        paths.append(str(tmp_path / f"small_{i:02d}.jpg"))
    (tmp_path / "notes.jpg").write_text("not a picture\n")  # a failed row: no payload at all
    paths.append(str(tmp_path / "notes.jpg"))
    pieces = [pa.table({"location": paths[k : k + 5]}) for k in range(0, len(paths), 5)]
    work = ((piece, list(range(piece.num_rows)), {}) for piece in pieces)
    ok_rows, failed_rows, on_device = 0, 0, 0
    for _piece, ok, bad, vecs in rx.encode_with_ray(
        work, model_info=model.describe(), options=BuildOptions(executor="ray", gpu_decode=True), model=model
    ):
        assert vecs.shape == (len(ok), model.dimension)
        ok_rows, failed_rows = ok_rows + len(ok), failed_rows + len(bad)
        on_device += sum(r["on_device"] for r in ok)
    assert (ok_rows, failed_rows, on_device) == (40, 1, 40)


def test_the_encoder_actor_decodes_pending_jpegs_and_records_what_fails(model):
    """In the actor (no Ray needed): a block from device-decoding read tasks holds JPEG bytes to
    decode, a tensor the read task decoded, and a failure; a JPEG whose header reads but whose
    data is cut short fails on both decoders and becomes a ``truncated`` failure of its row."""
    import io

    import torch

    from indexer.build.ray.workers import Encoder as _Encoder
    from indexer.media.batch_decode import BatchDecoder

    enc = _Encoder(model.describe(), "cpu", "fp32", 1, gpu_decode=True)
    buf = io.BytesIO()
    picture(300, (500, 380)).save(buf, format="JPEG", quality=92)
    jpeg = buf.getvalue()
    png = model.transform(picture(301, (260, 300)).convert("RGB"))

    def block():
        return {
            "ok": np.array([True, True, False, True]),
            "stage": np.array(["", "", "decode", ""], dtype=object),
            "reason": np.array(["", "", "not-an-image", ""], dtype=object),
            "detail": np.array(["", "", "not a picture", ""], dtype=object),
            "payload": np.array([jpeg, png.numpy().tobytes(), b"", _truncated_jpeg()], dtype=object),
            "pending": np.array([True, False, False, True]),
            "pad": np.array([b"", b"", bytes(100), b""], dtype=object),
        }

    out = enc(block())
    assert "payload" not in out and "pending" not in out and "pad" not in out
    assert out["ok"].tolist() == [True, True, False, False]
    assert out["on_device"].tolist() == [True, False, False, False]
    assert list(out["reason"]) == ["", "", "not-an-image", "truncated"] and out["stage"][3] == "decode"
    want_jpeg = model.encode_image_tensors(BatchDecoder(model.preprocess_config, "cpu").decode([jpeg]).tensors)[0]
    want_png = model.encode_image_tensors(torch.stack([png]))[0]
    # the same input as the device decoder's and as the read task's (a batch of 2, not 1: float noise)
    assert float(out["vector"][0] @ want_jpeg) > 0.9999 and float(out["vector"][1] @ want_png) > 0.9999
    assert float(out["vector"][0] @ out["vector"][1]) < 0.99  # two pictures, not one twice
    assert not out["vector"][[2, 3]].any()

    def out_of_memory(datas):
        raise RuntimeError("CUDA out of memory")

    enc.decoder.decode = out_of_memory  # the decode step fails for the whole batch
    out = enc(block())
    assert not out["ok"].any() and not out["on_device"].any()
    assert list(out["reason"]) == ["worker-crashed", "worker-crashed", "not-an-image", "worker-crashed"]
    assert list(out["stage"]) == ["decode"] * 4 and "CUDA out of memory" in out["detail"][0]


@ray_timeout
def test_work_is_streamed_and_every_row_comes_back_once(tmp_path, ray_cluster, model, monkeypatch):
    """Many small pieces through a small in-flight window: the work generator is read lazily (at
    most a window ahead of the results) and each piece's rows come back once, with that piece."""
    import indexer.build.ray.driver as rx

    real_plan = rx.plan

    def small_plan(resources, **kw):
        p = real_plan(resources, **kw)
        return rx.RayPlan(**{**p.__dict__, "in_flight": 6, "decode_rows": 3, "batch_size": 4})

    monkeypatch.setattr(rx, "plan", small_plan)
    folder = make_folder(tmp_path / "imgs", 24, labels=False)
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    (folder / "bad.png").write_bytes(b"not a png")
    paths.append(str(folder / "bad.png"))
    pieces = [pa.table({"location": paths[k : k + 5]}) for k in range(0, len(paths), 5)]
    handed: list[int] = []

    def work():
        for n, piece in enumerate(pieces):
            handed.append(n)
            todo = list(range(piece.num_rows))
            if n == 1:
                todo = todo[1:]  # a row the driver handles itself (e.g. a failed download)
            yield piece, todo, {}

    info = model.describe()
    seen: dict[int, list[int]] = {id(p): [] for p in pieces}
    vectors: dict[str, np.ndarray] = {}
    failed: dict[str, str] = {}
    first_result_after = None
    for piece, ok, bad, vecs in rx.encode_with_ray(
        work(), model_info=info, options=BuildOptions(executor="ray"), batch_size=4, model=model
    ):
        if first_result_after is None:
            first_result_after = len(handed)
        assert vecs.shape == (len(ok), model.dimension) and vecs.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
        locs = piece.column("location").to_pylist()
        seen[id(piece)].extend(r["i"] for r in ok + bad)
        vectors.update({locs[r["i"]]: v for r, v in zip(ok, vecs)})
        failed.update({os.path.basename(locs[r["i"]]): r["reason"] for r in bad})
    assert first_result_after is not None and first_result_after < len(pieces)
    for n, piece in enumerate(pieces):
        want = list(range(1 if n == 1 else 0, piece.num_rows))
        assert sorted(seen[id(piece)]) == want
    assert failed == {"bad.png": "not-an-image"}
    assert set(vectors) == set(paths) - {paths[5], str(folder / "bad.png")}  # paths[5]: not in todo
    # Each vector is the model's own encoding of that file.
    from PIL import Image

    for path in paths[:3] + paths[-4:-1]:
        ref = model.encode_images([Image.open(path).convert("RGB")])[0]
        assert float(ref @ vectors[path]) >= 0.9999


@ray_timeout
def test_a_model_the_actors_cannot_load_is_a_named_error(tmp_path, ray_cluster, model):
    import indexer.build.ray.driver as rx

    folder = make_folder(tmp_path / "imgs", 3, labels=False)
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    info = {**model.describe(), "source": f"local-dir:{tmp_path / 'not-on-the-workers'}"}
    work = iter([(pa.table({"location": paths}), [0, 1, 2], {})])
    with pytest.raises(rx.RayExecutorError, match="not-on-the-workers"):
        list(rx.encode_with_ray(work, model_info=info, options=BuildOptions(executor="ray")))


def test_ray_missing_is_a_named_error(monkeypatch):
    import indexer.build.ray.driver as rx
    from indexer.errors import IndexerError

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(rx.RayNotInstalledError, match=r"pip install 'bioclip-search\[ray\]'") as info:
        next(rx.encode_with_ray(iter(()), model_info={}, options=BuildOptions(executor="ray")))
    assert isinstance(info.value, IndexerError)


def test_an_encoder_error_returns_the_batch_as_failures(model):
    """In the actor, an exception from the forward pass (out of GPU memory, say) becomes failures
    of that batch's decoded items; the items that had already failed keep their own reason."""
    from indexer.build.ray.workers import Encoder as _Encoder

    enc = _Encoder(model.describe(), "cpu", "fp32", 1)
    batch = {
        "ok": np.array([True, False, True]),
        "stage": np.array(["", "decode", ""], dtype=object),
        "reason": np.array(["", "truncated", ""], dtype=object),
        "detail": np.array(["", "cut short", ""], dtype=object),
        "tensor": np.zeros((3, 3, 100, 100), np.float32),  # not the model's input size: encode raises
    }
    out = enc(batch)
    assert not out["ok"].any() and out["vector"].shape == (3, model.dimension)
    assert list(out["stage"]) == ["encode", "decode", "encode"]
    assert list(out["reason"]) == ["worker-crashed", "truncated", "worker-crashed"]
    assert "ValueError" in out["detail"][0] and out["detail"][1] == "cut short"
    good = enc({**batch, "ok": np.array([True, False, True]), "tensor": np.zeros((3, 3, 224, 224), np.float32)})
    assert good["ok"].tolist() == [True, False, True]
    np.testing.assert_allclose(np.linalg.norm(good["vector"][[0, 2]], axis=1), 1.0, atol=1e-5)


def test_plan_from_cluster_resources():
    from indexer.build.ray.driver import RayExecutorError, plan

    gpu = plan({"CPU": 64, "GPU": 8})
    assert (gpu.device, gpu.actors, gpu.actor_gpus, gpu.batch_size) == ("cuda", 8, 1, 256)
    cpu = plan({"CPU": 2})
    assert (cpu.device, cpu.actors, cpu.actor_cpus, cpu.actor_gpus, cpu.batch_size) == ("cpu", 1, 1, 0, 8)
    big = plan({"CPU": 32}, batch_size=16)
    assert (big.actors, big.actor_cpus, big.batch_size) == (6, 4, 16)
    assert plan({"CPU": 8, "GPU": 2}, device="cpu").device == "cpu"
    with pytest.raises(RayExecutorError, match="no GPU"):
        plan({"CPU": 8}, device="cuda")


def test_a_worker_that_cannot_see_a_file_this_machine_sees_stops_the_run(tmp_path):
    from indexer.build.ray.driver import RayExecutorError, _check_visible

    here = tmp_path / "x.png"
    here.write_bytes(b"x")
    gone = {"i": 0, "stage": "fetch", "reason": "not-found", "detail": "", "host": "node-7"}
    _check_visible([gone], {0: str(tmp_path / "deleted.png")})  # gone here too: a real failure
    with pytest.raises(RayExecutorError, match="node-7.*same paths"):
        _check_visible([gone], {0: str(here)})


def test_a_worker_that_cannot_see_a_tar_shard_stops_the_run(tmp_path):
    """The guard looks at the shard of a tar location (percent-decoded, without ?offset=&size=)."""
    from indexer.build.ray.driver import RayExecutorError, _check_visible
    from indexer.locations import tar_location

    shard = tmp_path / "shards 1" / "000.tar"
    shard.parent.mkdir()
    shard.write_bytes(b"\0" * 1024)
    gone = {"i": 0, "stage": "fetch", "reason": "not-found", "detail": "", "host": "node-7"}
    _check_visible([gone], {0: tar_location(str(tmp_path / "deleted.tar"), "a.jpg", 512, 10)})  # gone here too
    for location in (tar_location(str(shard), "a.jpg", 512, 10), tar_location(str(shard), "a.jpg")):
        with pytest.raises(RayExecutorError, match="node-7.*same paths"):
            _check_visible([gone], {0: location})
