"""The Ray executor of a build: decoders and encoder actors on Ray Data; commits stay here.

:func:`encode_with_ray` is what ``BuildOptions(executor="ray")`` runs in place of the local decode
workers and model. The build's own process (the collection's single writer) scans, diffs,
downloads and commits exactly as the local executor does; only the work in between moves to Ray::

    driver    work pieces -> blocks of item descriptors -> feed queue (a Ray actor)
    Ray Data  read tasks: take a block from the queue, read + decode + preprocess it
              (``process_item``, one CPU each) -> encoder actors (a fixed pool, ``num_gpus=1``
              each on GPUs, several torch threads each on CPUs) -> vectors
    driver    results, grouped by the piece they belong to -> commit

One Ray Data pipeline serves the whole run, so each encoder actor loads the model once. Its input
is a stream fed from this process: at most ``RayPlan.in_flight`` items are fed and not yet back, so
the driver's memory stays bounded however large the collection is, and Ray Data's backpressure
bounds the decoded tensors in between. The read tasks are long-lived (they drain the queue until
a sentinel), so they are the decode workers: one per CPU left over by the encoders.

Failures are values, as in the local executor: a bad file comes back as a failure record with the
reason :func:`indexer.pipeline.process_item` gave it. A batch the encoder fails on (out of GPU
memory, say) comes back as ``worker-crashed`` failures at stage ``encode`` (retried by the next
run). A Ray task that dies (a worker killed, a crash in a native decoder) loses the items it held:
Ray Data drops its block and the items come back, at the end, as ``worker-crashed`` failures.
More than ``_MAX_LOST_BLOCKS`` of either stops the run with :class:`RayExecutorError` (committed
work is kept). A model that cannot be loaded in the actors, decoders that all fail, or workers
that cannot see files this machine sees are :class:`RayExecutorError` too: set-up problems, not
properties of the images, so they are never recorded against the images.

Every Ray node must see the item paths (and the download cache, for URL sources) at the same path
as this process, and must have bioclip-search and the model (``hf-hub:`` cache or ``local-dir:``
folder) installed.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from indexer.errors import IndexerError, RayExecutorError, RayNotInstalledError
from indexer.locations import local_path, text_to_path

__all__ = ["RayExecutorError", "RayNotInstalledError", "RayPlan", "encode_with_ray", "plan"]

log = logging.getLogger(__name__)

#: Ray Data blocks that may fail (their items recorded as ``worker-crashed``) before the run
#: stops. More than a few means something systematic: stop and say so.
_MAX_LOST_BLOCKS = 16
#: Reasons with which a worker says "no such file": checked against this machine's view.
_MISSING = frozenset({"not-found", "broken-symlink"})


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is an extra of ray: ray[data])
    except ImportError as exc:
        raise RayNotInstalledError(
            f"The Ray executor needs Ray Data, which is not installed ({exc}). "
            "Install it with: pip install 'bioclip-search[ray]'  (or: pip install 'ray[data]'), "
            "or build with the local executor."
        ) from None
    return ray


# ---------------------------------------------------------------------------------------------
# the plan: devices, actors, decoders, batch sizes


@dataclass(frozen=True)
class RayPlan:
    """How the Ray pipeline is laid out. :func:`plan` derives it from the cluster's resources."""

    device: str  # "cuda" or "cpu": where encoder actors run
    precision: str  # for the actors' load_model
    actors: int  # encoder actors (the pool's fixed size)
    actor_cpus: float  # CPUs reserved by each encoder actor (its torch threads on CPU)
    actor_gpus: float  # GPUs reserved by each encoder actor
    decoders: int  # long-lived read tasks that decode
    decode_cpus: float  # CPUs reserved by each decoder
    batch_size: int  # images per forward pass
    decode_rows: int  # items per block a decoder takes from the queue
    in_flight: int  # items fed to Ray and not yet back, at most (plus one block)


def plan(
    resources: Mapping[str, float],
    *,
    batch_size: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    actors: int | None = None,
    node_cpus: float | None = None,
) -> RayPlan:
    """Lay out a run for a cluster with ``resources`` (``ray.cluster_resources()``).

    ``device``: None picks ``cuda`` when the cluster has a GPU, else ``cpu``. GPU actors take one
    GPU (and one core) each, one actor per GPU by default. CPU actors share about three quarters
    of the cores (about 4 torch threads each). Decoders get the cores the actors leave, one each:
    actors hold their cores for the whole run, so the plan always leaves decoders some (else the
    pipeline would wait forever). ``batch_size``: None is 256 on GPUs, 8 on CPUs (the local
    executor's defaults, for the same reasons). ``node_cpus``: the largest node's CPUs; an actor
    never asks for more (it could not be placed).
    """
    cpus = float(resources.get("CPU", 1) or 1)
    gpus = int(resources.get("GPU", 0) or 0)
    dev = (device or ("cuda" if gpus else "cpu")).lower()
    if dev.startswith("cuda"):
        if gpus < 1:
            raise RayExecutorError(
                "encoder actors were asked to run on CUDA but the Ray cluster has no GPU "
                f"(resources: {dict(resources)}); start GPU nodes or use device cpu."
            )
        dev, n, bs, prec = "cuda", actors or gpus, batch_size or 256, precision
        if n > gpus:
            log.warning("%d GPU encoder actors asked for, the cluster has %d GPUs now: some wait for more", n, gpus)
        actor_cpus = min(1.0, cpus / (2 * n))  # feeding a GPU takes a core, unless cores are scarce
        actor_gpus, rows = 1, 64
    elif dev == "cpu":
        decode = max(cpus / 4, min(1.0, cpus / 2))
        n = actors or max(1, int((cpus - decode) // 4))
        actor_cpus = min((cpus - decode) / n, node_cpus or cpus)
        bs, prec, actor_gpus = batch_size or 8, ("fp32" if precision == "auto" else precision), 0
        rows = max(8, min(64, bs))
    else:
        raise RayExecutorError(f"the Ray executor runs encoders on cuda or cpu, not {device!r}")
    left = max(cpus - n * actor_cpus, 0.5)
    decode_cpus = min(1.0, left)
    decoders = max(1, int(left // decode_cpus))
    # Items Ray may hold without producing a result: a partial block per decoder, a partial batch
    # per actor. The window is well above that (or the driver would wait for results forever).
    in_flight = max(1024, 4 * (decoders * rows + n * bs), 8 * n * bs)
    return RayPlan(
        device=dev,
        precision=prec,
        actors=n,
        actor_cpus=actor_cpus,
        actor_gpus=actor_gpus,
        decoders=decoders,
        decode_cpus=decode_cpus,
        batch_size=bs,
        decode_rows=rows,
        in_flight=in_flight,
    )


# ---------------------------------------------------------------------------------------------
# Ray side: decoders (read tasks) and encoder actors. Per item, nothing here raises.


def _decoder(feed, preprocess: dict, max_pixels, max_bytes) -> Iterator[pa.Table]:
    """A read task: decode blocks of descriptors from the driver's feed until a ``None`` sentinel."""
    import torch

    from bioclip.preprocess import PreprocessConfig, make_transform

    torch.set_num_threads(1)  # one core per decoder: Ray gave it one
    cfg = PreprocessConfig.from_dict(preprocess)
    transform = make_transform(cfg)
    host = socket.gethostname()
    while True:
        block = feed.get(block=True)
        if block is None:
            return
        yield _decode_block(block, cfg, transform, host, max_pixels, max_bytes)


def _decode_block(block: pa.Table, cfg, transform, host: str, max_pixels, max_bytes) -> pa.Table:
    """Decode and preprocess one block of descriptors with :func:`process_item`.

    Columns: pid, i, ok, sha256, width, height, stage, reason, detail, host, tensor (float32
    (3, S, S) per row; zeros for failed items). Strings are never null, so that every block has
    the same Arrow schema.
    """
    from ray.data.extensions import ArrowTensorArray

    from indexer.pipeline import process_item

    n = block.num_rows
    read_from = block.column("read_from").to_pylist()
    location = block.column("location").to_pylist()
    tensors = np.zeros((n, 3, cfg.size, cfg.size), dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    sha, stage, reason, detail = [""] * n, [""] * n, [""] * n, [""] * n
    width, height = np.zeros(n, np.int32), np.zeros(n, np.int32)
    for j in range(n):
        rec = process_item(j, read_from[j], location[j], transform, cfg.draft_size, max_pixels, max_bytes)
        if rec.get("tensor") is not None:
            ok[j] = True
            tensors[j] = rec["tensor"].numpy()
            sha[j], width[j], height[j] = rec["sha256"], rec["width"], rec["height"]
        else:
            stage[j] = rec.get("stage") or "decode"
            reason[j] = rec.get("reason") or "error"
            detail[j] = rec.get("detail") or ""
    return pa.table(
        {
            "pid": block.column("pid"),
            "i": block.column("i"),
            "ok": pa.array(ok),
            "sha256": pa.array(sha, pa.string()),
            "width": pa.array(width),
            "height": pa.array(height),
            "stage": pa.array(stage, pa.string()),
            "reason": pa.array(reason, pa.string()),
            "detail": pa.array(detail, pa.string()),
            "host": pa.array([host] * n, pa.string()),
            "tensor": ArrowTensorArray.from_numpy(tensors),
        }
    )


class _Encoder:
    """An encoder actor: the collection's model, loaded once, encoding decoded batches."""

    def __init__(self, model_info: dict, device: str, precision: str, threads: int):
        import torch

        from indexer.store.model import load_recorded_model

        if device == "cpu":
            torch.set_num_threads(max(1, int(threads)))
        self.model = load_recorded_model(model_info, device=device, precision=precision)
        want = model_info.get("dimension")
        if want is not None and self.model.dimension != int(want):
            raise RayExecutorError(
                f"model {model_info.get('name') or model_info['source']} gives {self.model.dimension}-d vectors in a Ray worker; "
                f"the collection holds {want}-d vectors"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        tensors = batch.pop("tensor")
        ok = np.asarray(batch["ok"], dtype=bool)
        vectors = np.zeros((len(ok), self.model.dimension), dtype=np.float32)
        if ok.any():
            try:
                vectors[ok] = self.model.encode_image_tensors(torch.from_numpy(np.ascontiguousarray(tensors[ok])))
            except Exception as exc:  # e.g. out of GPU memory: the batch's items come back as failures
                batch["stage"] = np.where(ok, "encode", batch["stage"]).astype(object)
                batch["reason"] = np.where(ok, "worker-crashed", batch["reason"]).astype(object)
                batch["detail"] = np.where(ok, f"{type(exc).__name__}: {exc}", batch["detail"]).astype(object)
                batch["ok"] = np.zeros_like(ok)
        batch["vector"] = vectors
        return batch


def _dataset(ray, feed, model_info: dict, options, p: RayPlan):
    """The streaming pipeline: ``p.decoders`` decoders (read tasks) -> ``p.actors`` encoders."""
    import ray.data
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    preprocess = dict(model_info.get("preprocess") or {})
    max_pixels, max_bytes = options.max_pixels, options.max_bytes

    class _Feed(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
            return [
                ReadTask(lambda: _decoder(feed, preprocess, max_pixels, max_bytes), meta) for _ in range(p.decoders)
            ]

    ds = ray.data.read_datasource(_Feed(), num_cpus=p.decode_cpus, override_num_blocks=p.decoders)
    ds = ds.map_batches(
        _Encoder,
        batch_size=p.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=p.actors),
        num_cpus=p.actor_cpus,
        num_gpus=p.actor_gpus or None,
        fn_constructor_kwargs={
            "model_info": dict(model_info),
            "device": p.device,
            "precision": p.precision,
            "threads": max(1, int(p.actor_cpus)),
        },
    )
    ctx = ds.context
    # A read task's output buffer holds what it yields until the buffer exceeds the target block
    # size. Just under one decoded block: every block goes on at once (a long-lived decoder must
    # not sit on finished images), and none is sliced.
    size = int(preprocess.get("size") or 224)
    ctx.target_max_block_size = int(0.9 * p.decode_rows * (3 * size * size * 4 + 256))
    ctx.max_errored_blocks = _MAX_LOST_BLOCKS
    # The input is fed by the driver, which may pause for long (downloading a piece of URLs):
    # an idle pipeline is not a stuck one.
    ctx.execution_no_progress_timeout_s = -1
    ctx.enable_progress_bars = False
    return ds


# ---------------------------------------------------------------------------------------------
# driver side


def encode_with_ray(
    work: Iterable[tuple[pa.Table, list[int], dict[int, str]]],
    *,
    model_info: dict,
    options,
    batch_size: int | None = None,
    model: Any = None,
    device: str | None = None,
    actors: int | None = None,
) -> Iterator[tuple[pa.Table, list[dict], list[dict], np.ndarray]]:
    """Decode and encode ``work`` on Ray Data; yield ``(piece, ok, failed, vectors)`` as results come.

    ``work`` yields ``(piece, todo, local_paths)``: a table of work rows (``location`` column), the
    row indexes to process, and downloaded files for remote rows. It is consumed in this thread,
    lazily, at most ``RayPlan.in_flight`` items ahead of the results. Each yield covers some rows
    of one piece (the same table object), in no particular order: ``ok`` holds ``{"i", "sha256",
    "width", "height"}``, ``failed`` ``{"i", "stage", "reason", "detail"}`` (``i`` indexes
    ``piece``), ``vectors`` is float32 (len(ok), d), L2-normalised, aligned with ``ok``. Every row
    of ``todo`` comes back exactly once, in ``ok`` or ``failed``.

    Ray: uses the Ray this process has already initialised, else ``ray.init(options.ray_address)``
    (None: Ray's default, i.e. ``RAY_ADDRESS`` or a local cluster started with ``ray start``, else
    a new local Ray), disconnected (and, if started here, stopped) at the end. Encoders run on
    ``device`` (None: cuda when the cluster has GPUs), ``actors`` of them (None: see :func:`plan`),
    with the model recorded in ``model_info`` (a collection's ``model``), loaded in each actor.
    ``options.batch_size`` (None: by the actors' device) sets the encoder batch; ``batch_size``
    (the driver's choice, made for the driver's device) is used only when the actors run on the
    same kind of device as ``model``, the driver's loaded model, whose precision is then kept too.

    Raises RayNotInstalledError, RayExecutorError.
    """
    ray = _import_ray()
    connected_here = False
    if not ray.is_initialized():
        address = getattr(options, "ray_address", None)
        try:
            ray.init(address=address, configure_logging=False)
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError: all mean "no cluster"
            where = f"connect to the Ray cluster at {address!r}" if address else "start or find a Ray cluster"
            raise RayExecutorError(f"cannot {where}: {exc}") from exc
        connected_here = True
    elif getattr(options, "ray_address", None):
        log.info("Ray is already initialised in this process; using it, not %s", options.ray_address)
    try:
        yield from _run(ray, work, model_info, options, batch_size, model, device, actors)
    finally:
        if connected_here:
            ray.shutdown()


@dataclass
class _Piece:
    """A piece of work on its way through Ray: what the driver needs to commit its results."""

    table: pa.Table
    read_from: dict[int, str]  # row -> what a worker reads (a downloaded file for URLs)
    locations: list[str]
    returned: set[int] = field(default_factory=set)


class _Feeder:
    """Turns the work generator into descriptor blocks on the feed queue, a window ahead."""

    def __init__(self, work, feed, p: RayPlan):
        self.source = iter(work)
        self.feed = feed
        self.p = p
        self.pieces: dict[int, _Piece] = {}
        self.fed = 0
        self.back = 0
        self.done = False  # the work is exhausted and the decoders were told
        self._current: tuple[int, list[int]] | None = None  # (pid, rows of that piece not fed yet)
        self._next_pid = 0

    def fill(self) -> None:
        """Feed blocks until ``p.in_flight`` items are out or the work is done."""
        while not self.done and self.fed - self.back < self.p.in_flight:
            if self._current is None or not self._current[1]:
                try:
                    table, todo, local_paths = next(self.source)
                except StopIteration:
                    self.finish()
                    return
                if not todo:
                    continue
                pid, self._next_pid = self._next_pid, self._next_pid + 1
                locations = table.column("location").to_pylist()
                self.pieces[pid] = _Piece(table, {i: local_paths.get(i, locations[i]) for i in todo}, locations)
                self._current = (pid, list(todo))
            pid, rows = self._current
            take, self._current = rows[: self.p.decode_rows], (pid, rows[self.p.decode_rows :])
            piece = self.pieces[pid]
            self.feed.put(
                pa.table(
                    {
                        "pid": pa.array([pid] * len(take), pa.int64()),
                        "i": pa.array(take, pa.int64()),
                        "read_from": pa.array([piece.read_from[i] for i in take], pa.string()),
                        "location": pa.array([piece.locations[i] for i in take], pa.string()),
                    }
                )
            )
            self.fed += len(take)

    def finish(self) -> None:
        """Tell every decoder to stop once the queue is drained (a sentinel each)."""
        if not self.done:
            self.done = True
            for _ in range(self.p.decoders):
                self.feed.put(None)

    def returned(self, pid: int, rows: list[int]) -> _Piece:
        piece = self.pieces[pid]
        piece.returned.update(rows)
        self.back += len(rows)
        if len(piece.returned) >= len(piece.read_from):
            del self.pieces[pid]
        return piece

    def lost(self) -> Iterator[tuple[_Piece, list[int]]]:
        """Pieces with rows that never came back, and those rows; forgets them."""
        for pid in sorted(self.pieces):
            piece = self.pieces.pop(pid)
            missing = sorted(set(piece.read_from) - piece.returned)
            if missing:
                yield piece, missing


_END = object()


def _run(ray, work, model_info, options, batch_size, model, device, actors):
    resources = ray.cluster_resources()
    actor_kind = (device or ("cuda" if resources.get("GPU", 0) else "cpu")).split(":")[0]
    same_kind = model is not None and str(model.device).split(":")[0] == actor_kind
    node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=None)
    p = plan(
        resources,
        batch_size=options.batch_size or (batch_size if same_kind else None),
        device=device,
        precision=model.precision if same_kind else "auto",
        actors=actors,
        node_cpus=node_cpus,
    )
    log.info("Ray executor: %s", p)
    from ray.util.queue import Queue

    feed = Queue(actor_options={"num_cpus": 0})
    feeder = _Feeder(work, feed, p)
    results: queue.Queue = queue.Queue()
    stop = threading.Event()
    consumer = threading.Thread(
        target=_consume,
        args=(_dataset(ray, feed, model_info, options, p), results, stop),
        name="ray-results",
        daemon=True,
    )
    encode_errors = 0
    try:
        consumer.start()
        while True:
            feeder.fill()  # the work generator is read only as fast as results come back
            try:
                item = results.get(timeout=1.0)
            except queue.Empty:
                if not consumer.is_alive():
                    raise RayExecutorError("the Ray results thread ended without a result") from None
                continue
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise _wrap(item) from item
            for pid, ok, failed, vectors in _split(item):
                piece = feeder.pieces[pid]
                _check_visible(failed, piece.read_from)
                if any(f["stage"] == "encode" for f in failed):
                    encode_errors += 1
                    if encode_errors > _MAX_LOST_BLOCKS:
                        detail = next(f["detail"] for f in failed if f["stage"] == "encode")
                        raise RayExecutorError(f"encoding failed in {encode_errors} batches, lately: {detail}")
                for f in failed:
                    f.pop("host", None)
                feeder.returned(pid, [r["i"] for r in ok] + [r["i"] for r in failed])
                yield piece.table, ok, failed, vectors
        if not feeder.done:
            raise RayExecutorError(
                "the Ray pipeline ended before the work was done: its decoders failed (see the Ray "
                "logs above; is bioclip-search installed on every node?)"
            )
        # Items that never came back were held by a Ray task that died (its block dropped,
        # DataContext.max_errored_blocks): failures worth retrying, never silently lost.
        lost = 0
        empty = np.zeros((0, int(model_info.get("dimension") or 0)), np.float32)
        for piece, rows in feeder.lost():
            lost += len(rows)
            failed = [
                {"i": i, "stage": "decode", "reason": "worker-crashed", "detail": "its Ray task died"} for i in rows
            ]
            yield piece.table, [], failed, empty
        if lost:
            log.warning("%d items were lost to Ray tasks that died; recorded as worker-crashed", lost)
    finally:
        stop.set()
        try:
            feeder.finish()  # lets the decoders finish, so the pipeline winds down
        except Exception:  # the cluster may be gone already
            pass
        consumer.join(timeout=30)
        if consumer.is_alive():
            log.warning("the Ray pipeline did not stop within 30 s; leaving it to Ray")
        try:
            feed.shutdown(force=True)
        except Exception:
            pass


def _consume(ds, results: queue.Queue, stop: threading.Event) -> None:
    """Drain the dataset into ``results``. Runs in a thread: the driver thread feeds and commits
    (the writer's DuckDB connection and the work generator belong to it)."""
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
            results.put(batch)
            if stop.is_set():
                break
        results.put(_END)
    except BaseException as exc:  # handed to the driver thread, which raises it
        results.put(exc)


def _split(batch: dict[str, np.ndarray]) -> Iterator[tuple[int, list, list, np.ndarray]]:
    """One result batch as (pid, ok, failed, vectors) per piece it touches."""
    pids = np.asarray(batch["pid"])
    good_rows = np.asarray(batch["ok"], dtype=bool)
    for pid in np.unique(pids):
        sel = np.flatnonzero(pids == pid)
        good, bad = sel[good_rows[sel]], sel[~good_rows[sel]]
        ok = [
            {
                "i": int(batch["i"][j]),
                "sha256": str(batch["sha256"][j]),
                "width": int(batch["width"][j]),
                "height": int(batch["height"][j]),
            }
            for j in good
        ]
        failed = [
            {
                "i": int(batch["i"][j]),
                "stage": str(batch["stage"][j]),
                "reason": str(batch["reason"][j]),
                "detail": str(batch["detail"][j]),
                "host": str(batch["host"][j]),
            }
            for j in bad
        ]
        yield int(pid), ok, failed, np.asarray(batch["vector"], dtype=np.float32)[good]


def _check_visible(failed: list[dict], read_from: dict[int, str]) -> None:
    """A worker that cannot find a file this machine sees means the cluster is set up wrong:
    recording such items as failures would mark good files bad. Stop instead."""
    for f in failed:
        if f["reason"] not in _MISSING:
            continue
        local = local_path(read_from.get(f["i"], ""))
        if local and os.path.exists(text_to_path(local)):
            raise RayExecutorError(
                f"a Ray worker on {f.get('host') or 'another node'} cannot find {local}, which this machine "
                "can read: every Ray node must see the sources (and the download cache) at the same paths, "
                "e.g. on a shared file system."
            )


def _wrap(exc: BaseException) -> BaseException:
    """Ray's exceptions as a RayExecutorError naming the first cause (ours pass through)."""
    if isinstance(exc, (IndexerError, KeyboardInterrupt, SystemExit)):
        return exc
    cause = exc
    while getattr(cause, "cause", None) is not None and cause.cause is not cause:  # RayTaskError.cause
        cause = cause.cause
    if isinstance(cause, IndexerError):
        return cause
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    return RayExecutorError(f"the Ray pipeline failed: {lines[-1] if lines else type(cause).__name__}")
