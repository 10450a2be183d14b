"""The Ray executor of a build: decoders and encoder actors on Ray Data; commits stay here.

:func:`encode_with_ray` is what ``BuildOptions(executor="ray")`` runs in place of the local decode
workers and model. The build's own process (the collection's single writer) scans, diffs,
downloads and commits exactly as the local executor does; only the work in between moves to Ray::

    driver    work pieces -> blocks of item descriptors -> feed queue (a Ray actor)
    Ray Data  read tasks: take a block from the queue, read + decode + preprocess it
              (``process_item``, one CPU each) -> encoder actors (a fixed pool, ``num_gpus=1``
              each on GPUs, several torch threads each on CPUs) -> vectors; with
              ``gpu_decode`` (the default on GPUs) the read tasks hand plain JPEGs on as
              bytes and the actors decode them in batches on their device (nvJPEG)
    driver    results, grouped by the piece they belong to -> commit

One Ray Data pipeline serves the whole run, so each encoder actor loads the model once. Its input
is a stream fed from this process: at most ``RayPlan.in_flight`` items are fed and not yet back, so
the driver's memory stays bounded however large the collection is, and Ray Data's backpressure
bounds the decoded tensors in between. The read tasks are long-lived (they drain the queue until
a sentinel), so they are the decode workers: one per CPU left over by the encoders.

Failures are values, as in the local executor: a bad file comes back as a failure record with the
reason :func:`indexer.build.item.process_item` gave it. A batch the encoder fails on (out of GPU
memory, say) comes back as ``worker-crashed`` failures at stage ``encode`` (retried by the next
run). A Ray task that dies (a worker killed, a crash in a native decoder) loses the items it held:
Ray Data drops its block and the items come back, at the end, as ``worker-crashed`` failures.
More than ``MAX_LOST_BLOCKS`` of either stops the run with :class:`RayExecutorError` (committed
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
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from indexer.build.ray.plan import RayPlan, plan
from indexer.build.ray.workers import MAX_LOST_BLOCKS, dataset
from indexer.errors import IndexerError, RayExecutorError, RayNotInstalledError
from indexer.locations import local_path, text_to_path

__all__ = ["RayExecutorError", "RayNotInstalledError", "RayPlan", "encode_with_ray", "plan"]

log = logging.getLogger(__name__)

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
    "width", "height"}`` (and ``"on_device"``, whether the actor's JPEG decoder decoded it, when
    JPEGs are decoded on the actors' device: ``options.gpu_decode``, by default on CUDA), ``failed`` ``{"i", "stage", "reason", "detail"}`` (``i`` indexes
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
        yield from _run(
            ray,
            work,
            model_info=model_info,
            options=options,
            batch_size=batch_size,
            model=model,
            device=device,
            actors=actors,
        )
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
        self._open_piece: tuple[int, list[int]] | None = None  # (pid, rows of that piece not fed yet)
        self._next_pid = 0

    def fill(self) -> None:
        """Feed blocks until ``p.in_flight`` items are out or the work is done."""
        while not self.done and self.fed - self.back < self.p.in_flight:
            if self._open_piece is None or not self._open_piece[1]:
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
                self._open_piece = (pid, list(todo))
            pid, rows = self._open_piece
            take, self._open_piece = rows[: self.p.decode_rows], (pid, rows[self.p.decode_rows :])
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


def _run(
    ray: Any,
    work: Iterable,
    *,
    model_info: dict,
    options: Any,
    batch_size: int | None,
    model: Any,
    device: str | None,
    actors: int | None,
) -> Iterator:
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
    gpu_decode = options.gpu_decode if getattr(options, "gpu_decode", None) is not None else p.device == "cuda"
    log.info("Ray executor: %s%s", p, "; JPEGs decoded by the encoder actors" if gpu_decode else "")
    from ray.util.queue import Queue

    feed = Queue(actor_options={"num_cpus": 0})
    feeder = _Feeder(work, feed, p)
    results: queue.Queue = queue.Queue()
    stop = threading.Event()
    consumer = threading.Thread(
        target=_consume,
        args=(dataset(ray, feed, model_info, options, p, gpu_decode), results, stop),
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
                    if encode_errors > MAX_LOST_BLOCKS:
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
    on_device = np.asarray(batch["on_device"], dtype=bool) if "on_device" in batch else None
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
        if on_device is not None:
            for r, j in zip(ok, good):
                r["on_device"] = bool(on_device[j])
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
    cause: Any = exc
    while getattr(cause, "cause", None) is not None and cause.cause is not cause:  # RayTaskError.cause
        cause = cause.cause
    if isinstance(cause, IndexerError):
        return cause
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    return RayExecutorError(f"the Ray pipeline failed: {lines[-1] if lines else type(cause).__name__}")
