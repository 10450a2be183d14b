"""The executor interface: what decodes and encodes the work, and the one place that picks it.

An executor turns :class:`~indexer.build.work.WorkPiece` s into
:class:`~indexer.build.encode.Results` (every row of every piece's ``todo`` comes back once, ok or
failed), consuming the pieces lazily in the build's own thread. ``local`` decodes in worker
processes and leaves encoding to the build's model; ``ray`` decodes and encodes on a Ray cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from indexer.build.context import BuildRun
from indexer.build.encode import Results
from indexer.build.item import ItemSettings
from indexer.build.local import LocalExecutor, default_batch_size, plan_threads
from indexer.build.work import WorkPiece

__all__ = ["Executor", "EXECUTORS", "make_executor"]

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    def run(self, pieces: Iterable[WorkPiece]) -> Iterator[Results]: ...


def make_executor(run: BuildRun, model: Any, device: str) -> Executor:
    """The executor ``run.options.executor`` names, sized for this machine and ``model``.

    Sets this process's torch threads (the encoder's; decode workers take one each)."""
    import torch

    options = run.options
    batch_size = options.batch_size or default_batch_size(model)
    workers, threads = plan_threads(str(model.device), options.workers)
    torch.set_num_threads(threads)
    if options.executor == "ray":
        from indexer.build.ray import RayExecutor

        return RayExecutor(
            run.writer.collection.model, options, model, batch_size, None if device == "auto" else device
        )
    on_device = options.gpu_decode if options.gpu_decode is not None else str(model.device).startswith("cuda")
    settings = ItemSettings(
        model.transform, model.preprocess_config.draft_size, options.max_pixels, options.max_bytes, on_device
    )
    decoder = None
    if on_device:
        from indexer.media.batch_decode import BatchDecoder

        decoder = BatchDecoder(model.preprocess_config, str(model.device), max_pixels=options.max_pixels)
    return LocalExecutor(model, settings, batch_size, workers, decoder=decoder)
