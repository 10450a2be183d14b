"""Where the shards of a sharded index build run: in this process, local worker processes, or Ray tasks.

One interface, :func:`run_tasks`: each task is ``fn(task, visitor)`` and returns a picklable value;
results come back as tasks finish (not in order), so the caller can report progress.

* ``inline``: one after the other in this process (tests, tiny builds, platforms without fork).
* ``local``: ``workers`` forked processes, each with **one** FAISS (OpenMP) thread. Forking is what
  lets a visitor that holds closures (the tuning set's filters) reach the workers without pickling;
  one thread per process is what makes forking safe: GNU OpenMP, which FAISS wheels link, hangs in
  a forked child that opens a parallel region after its parent had (measured here). Processes
  rather than threads also degrade gracefully on a busy machine, where OpenMP's barriers do not.
* ``ray``: one Ray task per shard (``num_cpus=threads``) on the cluster this process is connected
  to, else ``ray.init(ray_address)``; the visitor travels by Ray's cloudpickle. Every node must see
  the vector files and the shard folder at the same paths (a shared file system).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from indexer.errors import AnnError, RayExecutorError, RayNotInstalledError

__all__ = ["EXECUTORS", "run_tasks", "available_cores"]

log = logging.getLogger(__name__)

EXECUTORS = ("inline", "local", "ray")

_VISITOR: Any = None


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _init_local(visitor: Any) -> None:
    import faiss

    global _VISITOR
    _VISITOR = visitor
    faiss.omp_set_num_threads(1)


def _call_local(fn: Callable[[Any, Any], Any], task: Any) -> Any:
    return fn(task, _VISITOR)


def run_tasks(
    fn: Callable[[Any, Any], Any],
    tasks: Sequence[Any],
    visitor: Any,
    *,
    executor: str = "local",
    workers: int = 1,
    threads: int = 1,
    ray_address: str | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(task number, fn(task, visitor))`` as tasks finish. A task that raises stops the run:
    the other tasks are cancelled and the error is raised (an :class:`AnnError` as it was, anything
    else wrapped in one naming the task)."""
    if executor not in EXECUTORS:
        raise AnnError(f"unknown shard executor {executor!r}; expected one of {EXECUTORS}")
    if executor == "inline" or (executor == "local" and ("fork" not in mp.get_all_start_methods() or workers <= 1)):
        for i, task in enumerate(tasks):
            yield i, _guard(i, functools.partial(fn, task, visitor))
    elif executor == "local":
        yield from _run_local(fn, tasks, visitor, workers)
    else:
        yield from _run_ray(fn, tasks, visitor, threads, ray_address)


def _guard(i: int, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except AnnError:
        raise
    except Exception as exc:
        raise AnnError(f"shard {i} failed: {type(exc).__name__}: {exc}") from exc


def _run_local(
    fn: Callable[[Any, Any], Any], tasks: Sequence[Any], visitor: Any, workers: int
) -> Iterator[tuple[int, Any]]:
    ctx = mp.get_context("fork")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_local, initargs=(visitor,))
    try:
        futures = {pool.submit(_call_local, fn, task): i for i, task in enumerate(tasks)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield futures[fut], _guard(futures[fut], fut.result)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(
    fn: Callable[[Any, Any], Any], tasks: Sequence[Any], visitor: Any, threads: int, address: str | None
) -> Iterator[tuple[int, Any]]:
    try:
        import ray
    except ImportError:
        raise RayNotInstalledError(
            "--executor ray needs Ray, which is not installed: pip install 'bioclip-search[ray]'"
        ) from None
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, configure_logging=False)
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError: all mean "no cluster"
            where = f"connect to the Ray cluster at {address!r}" if address else "start or find a Ray cluster"
            raise RayExecutorError(f"cannot {where}: {exc}") from exc
        started = True
    try:
        remote = ray.remote(num_cpus=threads, max_retries=2)(_ray_task)
        refs = {remote.remote(fn, task, visitor, threads): i for i, task in enumerate(tasks)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield refs[ref], _guard(refs[ref], functools.partial(ray.get, ref))
    finally:
        if started:
            ray.shutdown()


def _ray_task(fn: Callable[[Any, Any], Any], task: Any, visitor: Any, threads: int) -> Any:
    import faiss

    faiss.omp_set_num_threads(max(1, threads))
    return fn(task, visitor)
