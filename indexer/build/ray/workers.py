"""The Ray side of the executor: decoders (long-lived read tasks) and encoder actors.

Per item, nothing here raises: a decoder turns every problem into a failure record
(:func:`indexer.build.item.process_item`), an encoder a failed batch into ``worker-crashed``
failures of its items.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from indexer.build.item import ItemSettings, process_item
from indexer.build.ray.plan import RayPlan
from indexer.errors import RayExecutorError

__all__ = ["Encoder", "dataset", "MAX_LOST_BLOCKS"]

#: Ray Data blocks that may fail (their items recorded as ``worker-crashed``) before the run
#: stops. More than a few means something systematic: stop and say so.
MAX_LOST_BLOCKS = 16


def _decoder(feed: Any, preprocess: dict, max_pixels: int | None, max_bytes: int) -> Iterator[pa.Table]:
    """A read task: decode blocks of descriptors from the driver's feed until a ``None`` sentinel."""
    import torch

    from bioclip.preprocess import PreprocessConfig, make_transform

    torch.set_num_threads(1)  # one core per decoder: Ray gave it one
    cfg = PreprocessConfig.from_dict(preprocess)
    settings = ItemSettings(make_transform(cfg), cfg.draft_size, max_pixels, max_bytes)
    host = socket.gethostname()
    while True:
        block = feed.get(block=True)
        if block is None:
            return
        yield _decode_block(block, cfg.size, settings, host)


def _decode_block(block: pa.Table, size: int, settings: ItemSettings, host: str) -> pa.Table:
    """Decode and preprocess one block of descriptors with :func:`process_item`.

    Columns: pid, i, ok, sha256, width, height, stage, reason, detail, host, tensor (float32
    (3, S, S) per row; zeros for failed items). Strings are never null, so that every block has
    the same Arrow schema.
    """
    from ray.data.extensions import ArrowTensorArray

    n = block.num_rows
    read_from = block.column("read_from").to_pylist()
    location = block.column("location").to_pylist()
    tensors = np.zeros((n, 3, size, size), dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    sha, stage, reason, detail = [""] * n, [""] * n, [""] * n, [""] * n
    width, height = np.zeros(n, np.int32), np.zeros(n, np.int32)
    for j in range(n):
        rec = process_item(j, read_from[j], location[j], settings)
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


class Encoder:
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


def dataset(ray: Any, feed: Any, model_info: dict, options: Any, p: RayPlan) -> Any:
    """The streaming pipeline: ``p.decoders`` decoders (read tasks) -> ``p.actors`` encoders.
    ``ray`` is the initialised ray module (with ray.data imported)."""
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
        Encoder,
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
    ctx.max_errored_blocks = MAX_LOST_BLOCKS
    # The input is fed by the driver, which may pause for long (downloading a piece of URLs):
    # an idle pipeline is not a stuck one.
    ctx.execution_no_progress_timeout_s = -1
    ctx.enable_progress_bars = False
    return ds
