"""The local executor: decode worker processes (a torch DataLoader) feeding this process's model.

Workers are forked processes (bounded prefetch, pinned memory on CUDA) that never raise: every
problem is a failure record (:func:`indexer.build.item.process_item`). A worker that dies (killed,
out of memory, a crash in a native decoder) loses only its batch: the items not yet done are tried
again, and an item in a batch that crashed a worker twice is recorded as ``worker-crashed``.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from indexer.build.encode import Results
from indexer.build.item import ItemSettings, process_item
from indexer.build.work import WorkPiece

__all__ = ["LocalExecutor", "default_batch_size", "plan_threads"]

log = logging.getLogger(__name__)


def default_batch_size(model: Any) -> int:
    """Images per forward pass when the user gives none.

    CPU: 8 in fp32, the fastest per image for ViT-B/16 on a small CPU in ``bench/encode_throughput.py``
    (larger batches no longer keep their activations in cache); 16 in bf16, whose activations take
    half the bytes and whose matrix units (AMX) work on larger tiles. CUDA: a probe forward of 16 images
    measures the memory one image takes under this precision, and the batch is the largest power of
    two that fits in 60% of the free memory, between 32 and 1024 (256 if the probe fails).
    """
    if not str(model.device).startswith("cuda"):
        return 16 if getattr(model, "precision", "fp32") == "bf16" else 8
    try:
        import torch

        size = model.preprocess_config.size
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        model.encode_image_tensors(torch.zeros(16, 3, size, size))
        per_image = max(1, (torch.cuda.max_memory_allocated() - base) / 16)
        free, _total = torch.cuda.mem_get_info()
        fit = int(0.6 * free / per_image)
        batch = 1 << max(5, min(10, fit.bit_length() - 1))
        log.info("batch size %d (%.1f MB per image, %.1f GB free)", batch, per_image / 1e6, free / 1e9)
        return batch
    except Exception as exc:  # never let a probe stop a build
        log.warning("could not size the batch from GPU memory (%s); using 256", exc)
        return 256


_GATE_POLL_SECONDS = 0.002  # a worker's wait for its turn: a few ms against a batch's 100s of ms

CPU_MAX_WORKERS = 8
"""Decode workers on a CPU build at most, when the user gives no ``--workers``."""


def plan_threads(device: str, workers: int | None) -> tuple[int, int]:
    """(decode workers, torch threads in this process)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.startswith("cuda"):
        return (workers if workers is not None else max(1, min(16, cores - 1))), max(1, min(4, cores))
    # On CPU the encoder gets every core while it runs; the decode workers take their turn between
    # its batches (LocalExecutor's gate), one per core so the turn is short, at most CPU_MAX_WORKERS.
    return (workers if workers is not None else max(1, min(CPU_MAX_WORKERS, cores))), cores


class _ItemDataset:
    """Map-style dataset over some rows of one piece: index -> preprocessed tensor or a failure.

    Runs in worker processes: it must never raise (a raised exception would end the whole
    DataLoader), so every problem becomes a record with ``reason``.
    """

    def __init__(self, read_from: list[str], locations: list[str], settings: ItemSettings, gate: Any = None):
        self.read_from = read_from  # a downloaded file for remote items
        self.locations = locations
        self.settings = settings
        self.gate = gate  # a shared flag, 1 while the encoder is not running (CPU builds), or None
        self.parent = os.getpid()  # the build process, the workers' parent

    def __len__(self) -> int:
        return len(self.locations)

    def __getitem__(self, i: int) -> dict:
        if self.gate is not None:
            # Wait for the build process's turn to end, polling a shared flag (an Event's condition
            # would hang the build process's next set() if a worker died waiting on it); if the
            # build process died (killed, out of memory), end too rather than wait for ever.
            waited = 0
            while not self.gate.value:
                time.sleep(_GATE_POLL_SECONDS)
                waited += 1
                if waited % 500 == 0 and os.getppid() != self.parent:
                    os._exit(0)
        return process_item(i, self.read_from[i], self.locations[i], self.settings)


def _collate(records: list[dict]) -> tuple[Any, list[dict], list[dict]]:
    """(the decoded tensors stacked, in order, or None; ok records; failed records). An ok record
    that carries ``data`` (a JPEG left for the device's decoder) has no row in the stack."""
    import torch

    ok = [r for r in records if r["tensor"] is not None or "data" in r]
    decoded = [r["tensor"] for r in ok if r["tensor"] is not None]
    batch = torch.stack(decoded) if decoded else None
    for r in records:
        r.pop("tensor", None)
    return batch, ok, [r for r in records if "reason" in r]


#: How much a decode worker yields to the encoder on a CPU build (``os.nice`` increment). The
#: encoder's threads run in lockstep (each matrix product waits for its slowest thread), so a worker
#: that takes a core from one of them for a moment stalls them all; at low priority it decodes in
#: the gaps, and while the encoder waits on an empty queue it has the cores to itself.
CPU_WORKER_NICENESS = 19


def _worker_init(_worker_id: int, niceness: int = 0) -> None:
    import torch

    # One thread per decode worker: the cores belong to the encoder and the other workers.
    torch.set_num_threads(1)
    if niceness:
        try:
            os.nice(niceness)
        except OSError:  # not permitted here: decode at the same priority
            pass
    # SIGTERM sent to the whole process group (systemd stops a service so) ends a worker quietly:
    # the build process commits its work and shuts the workers down. torch's own handler would
    # re-raise it (killed by a signal), which the build process would see as a crash.
    signal.signal(signal.SIGTERM, _exit_quietly)
    # The resource sharer's thread reports its errors through sys.excepthook (not threading's).
    sys.excepthook = functools.partial(_quiet_sharer_hangup, sys.excepthook)


def _quiet_sharer_hangup(hook: Any, exc_type: type, exc: BaseException, tb: Any) -> None:
    """A worker hands its tensors to the build process through multiprocessing's resource sharer,
    a thread that serves file descriptors. When the build process stops (SIGTERM, Ctrl-C) while it
    is fetching one, that thread sees the connection reset: expected, and not worth a traceback on
    the user's terminal. Anything else goes to the usual hook."""
    frame = tb
    while frame is not None and not frame.tb_frame.f_code.co_filename.endswith("resource_sharer.py"):
        frame = frame.tb_next
    if frame is not None and issubclass(exc_type, (ConnectionError, EOFError)):
        return
    hook(exc_type, exc, tb)


def _exit_quietly(signum: int, frame: Any) -> None:
    os._exit(0)


def _mp_context() -> Any:
    import multiprocessing as mp

    # fork is fastest and shares the piece without pickling; fall back where it is unavailable.
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


class _LoaderCrash(Exception):
    """A decode worker process died (killed, out of memory, a crash in a native decoder)."""


@dataclass(frozen=True)
class LocalExecutor:
    """Decode in ``workers`` processes (0: in this one), ``batch_size`` images per yielded batch,
    tensors left for the build to encode with its model.

    With a ``decoder`` (and ``settings.device_jpeg``), the workers read, hash and decode everything
    but plain JPEGs, whose bytes they hand on; this process decodes those in one call per batch on
    the decoder's device (nvJPEG on CUDA) and resizes them there.
    """

    model: Any
    settings: ItemSettings
    batch_size: int
    workers: int
    gate_decoding: bool = True  # CPU: decoders and encoder take turns (see _loader); False: they overlap
    decoder: Any = None  # an indexer.media.batch_decode.BatchDecoder, or None

    def run(self, pieces: Iterable[WorkPiece]) -> Iterator[Results]:
        for piece in pieces:
            if piece.todo:
                yield from self._piece(piece)

    def _piece(self, piece: WorkPiece) -> Iterator[Results]:
        remaining = list(piece.todo)
        crashes = 0
        while remaining:
            done: list[int] = []
            try:
                for batch, ok, failed in self._loader(piece, remaining):
                    batch, ok, failed, on_device = self._decode_on_device(batch, ok, failed)
                    for r in ok + failed:
                        r["i"] = remaining[r["i"]]
                        done.append(r["i"])
                    yield Results(piece.table, ok, failed, tensors=batch, decoded_on_device=on_device)
                remaining = []
            except _LoaderCrash as crash:
                crashes += 1
                finished = set(done)
                remaining = [p for p in remaining if p not in finished]
                if not remaining:
                    break
                # The first item not yet done was in the batch being decoded when the worker died;
                # after a second crash there, record it as a failure rather than loop forever.
                if crashes >= 2:
                    bad = remaining.pop(0)
                    crashed = {"i": bad, "stage": "decode", "reason": "worker-crashed", "detail": str(crash)}
                    yield Results(piece.table, [], [crashed])
                    crashes = 0
                log.warning("a decode worker died (%s); continuing with %d items", crash, len(remaining))

    def _decode_on_device(
        self, batch: Any, ok: list[dict], failed: list[dict]
    ) -> tuple[Any, list[dict], list[dict], int]:
        """Decode the JPEGs the workers handed on (``data`` records) with :attr:`decoder` and merge
        them with the workers' tensors, in order; a file neither decoder reads becomes a failure."""
        jpegs = [j for j, r in enumerate(ok) if "data" in r]
        if not jpegs:
            return batch, ok, failed, 0
        import torch

        got = self.decoder.decode([ok[j].pop("data") for j in jpegs])
        on_device = {jpegs[pos]: got.tensors[k] for k, pos in enumerate(got.rows)}
        bad = {jpegs[pos]: exc for pos, exc in got.failures.items()}
        decoded = iter(batch.to(self.decoder.device, non_blocking=True)) if batch is not None else iter(())
        rows, keep, failed = [], [], list(failed)
        for j, r in enumerate(ok):
            if j in bad:
                exc = bad[j]
                failed.append({"i": r["i"], "stage": exc.stage, "reason": exc.reason, "detail": exc.detail})
                continue
            rows.append(on_device[j] if j in on_device else next(decoded))
            keep.append(r)
        return (torch.stack(rows) if rows else None), keep, failed, got.on_gpu

    def _loader(self, piece: WorkPiece, positions: list[int]) -> Iterator[tuple[Any, list[dict], list[dict]]]:
        """Yield (tensor batch, ok records, failed records) with record["i"] indexing ``positions``."""
        from torch.utils.data import DataLoader

        locations = piece.table.column("location").to_pylist()
        workers = self.workers
        cpu = not str(self.model.device).startswith("cuda")
        # On a CPU the encoder and the decoders take turns instead of sharing the cores: the
        # encoder's threads run in lockstep, so a decoder that takes one core stalls them all
        # (measured on two cores: the forward pass 16% slower beside one decode worker). The gate
        # is open while this process waits for decoded images (or commits), closed while it encodes.
        gate = _mp_context().RawValue("b", 0) if workers and cpu and self.gate_decoding else None
        dataset = _ItemDataset(
            [piece.read_from.get(p, locations[p]) for p in positions],
            [locations[p] for p in positions],
            self.settings,
            gate,
        )
        niceness = CPU_WORKER_NICENESS if cpu else 0
        loader: Any = DataLoader(
            cast(Any, dataset),  # a map-style dataset (len + getitem); not a torch class: torch loads late
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=not cpu,
            worker_init_fn=functools.partial(_worker_init, niceness=niceness) if workers else None,
            prefetch_factor=2 if workers else None,
            persistent_workers=False,
            multiprocessing_context=_mp_context() if workers else None,
        )
        try:
            if gate is None:
                yield from loader
                return
            batches = iter(loader)
            while True:
                gate.value = 1
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                gate.value = 0
                yield batch
        except RuntimeError as exc:
            if "DataLoader worker" in str(exc) or "exited unexpectedly" in str(exc):
                raise _LoaderCrash(str(exc)) from exc
            raise
        finally:
            if gate is not None:
                gate.value = 1  # never leave a worker waiting: the loader shuts them down next
