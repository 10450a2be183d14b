"""The Ray executor: decode tasks and encoder actors on Ray Data; the build's process commits.

:class:`RayExecutor` is what ``BuildOptions(executor="ray")`` runs in place of the local one; see
:mod:`indexer.build.ray.driver` for the pipeline and its failure handling. Ray is imported only when
a run starts (``pip install 'bioclip-search[ray]'``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from indexer.build.encode import Results
from indexer.build.ray.driver import encode_with_ray
from indexer.build.ray.plan import RayPlan, plan
from indexer.build.work import WorkPiece
from indexer.errors import RayExecutorError, RayNotInstalledError

__all__ = ["RayExecutor", "RayExecutorError", "RayNotInstalledError", "RayPlan", "encode_with_ray", "plan"]


@dataclass(frozen=True)
class RayExecutor:
    """Decode and encode on Ray with the model a collection records (``model_info``); ``model``
    and ``batch_size`` are the driver's (their precision and batch are kept when the actors run on
    the same kind of device); ``device`` None lets the cluster decide (cuda when it has GPUs)."""

    model_info: dict
    options: Any
    model: Any
    batch_size: int | None
    device: str | None

    def run(self, pieces: Iterable[WorkPiece]) -> Iterator[Results]:
        work = ((p.table, p.todo, p.read_from) for p in pieces)
        for table, ok, failed, vectors in encode_with_ray(
            work,
            model_info=self.model_info,
            options=self.options,
            batch_size=self.batch_size,
            model=self.model,
            device=self.device,
        ):
            on_device = sum(bool(r.pop("on_device", False)) for r in ok)
            yield Results(table, ok, failed, vectors=vectors, decoded_on_device=on_device)
