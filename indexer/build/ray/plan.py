"""How a Ray run is laid out on a cluster: encoder actors, decoders, batch sizes, the in-flight window."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from indexer.errors import RayExecutorError

__all__ = ["RayPlan", "plan"]

log = logging.getLogger(__name__)


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
