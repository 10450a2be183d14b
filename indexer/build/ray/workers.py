"""The Ray side of the executor: decoders (long-lived read tasks) and encoder actors.

Per item, nothing here raises: a decoder turns every problem into a failure record
(:func:`indexer.build.item.process_item`), an encoder a failed batch into ``worker-crashed``
failures of its items.

With device decoding (``gpu_decode``: the default when the actors run on CUDA), a decoder reads and
hashes every file but hands plain JPEGs on as bytes, and the encoder actor decodes them in one
batch on its own device with :class:`~indexer.media.batch_decode.BatchDecoder` (nvJPEG on CUDA),
next to the model, as the local executor's build process does. Its blocks then carry a
``payload`` column (binary: the JPEG's bytes, or the float32 tensor of an image the decoder
decoded itself), ``pending`` (the row is a JPEG still to decode) and ``pad`` (zeros that make a
small row count for :data:`DEVICE_ROW_FLOOR` bytes) in place of ``tensor``.
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

#: With device decoding, the bytes every row of a block counts for at least (a ``pad`` column of
#: zeros tops small rows up). A read task holds what it yields until its buffer exceeds Ray's target
#: block size; the target is set just under a full block of rows at this floor, so that every full
#: block goes on at once whatever its JPEGs weigh (small JPEGs or failed rows would otherwise sit in
#: the buffer, and with the driver's in-flight window spent on them the run would wait forever).
#: 32 KiB: few photographs are smaller, so the padding rarely costs anything.
DEVICE_ROW_FLOOR = 32 << 10


def _decoder(
    feed: Any, preprocess: dict, max_pixels: int | None, max_bytes: int, device_jpeg: bool = False
) -> Iterator[pa.Table]:
    """A read task: decode blocks of descriptors from the driver's feed until a ``None`` sentinel
    (``device_jpeg``: plain JPEGs are left for the encoder actor's device)."""
    import torch

    from bioclip.preprocess import PreprocessConfig, make_transform

    torch.set_num_threads(1)  # one core per decoder: Ray gave it one
    cfg = PreprocessConfig.from_dict(preprocess)
    settings = ItemSettings(make_transform(cfg), cfg.draft_size, max_pixels, max_bytes, device_jpeg)
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
    the same Arrow schema. With ``settings.device_jpeg``, ``payload`` and ``pending`` (see the
    module docstring) replace ``tensor``.
    """
    from ray.data.extensions import ArrowTensorArray

    n = block.num_rows
    read_from = block.column("read_from").to_pylist()
    location = block.column("location").to_pylist()
    device = settings.device_jpeg
    tensors = None if device else np.zeros((n, 3, size, size), dtype=np.float32)
    payload, pending = [b""] * n, np.zeros(n, dtype=bool)
    ok = np.zeros(n, dtype=bool)
    sha, stage, reason, detail = [""] * n, [""] * n, [""] * n, [""] * n
    width, height = np.zeros(n, np.int32), np.zeros(n, np.int32)
    for j in range(n):
        rec = process_item(j, read_from[j], location[j], settings)
        if rec.get("tensor") is not None or "data" in rec:
            ok[j] = True
            sha[j], width[j], height[j] = rec["sha256"], rec["width"], rec["height"]
            if "data" in rec:
                payload[j], pending[j] = rec["data"], True
            elif tensors is not None:
                tensors[j] = rec["tensor"].numpy()
            else:
                payload[j] = np.ascontiguousarray(rec["tensor"].numpy(), dtype=np.float32).tobytes()
        else:
            stage[j] = rec.get("stage") or "decode"
            reason[j] = rec.get("reason") or "error"
            detail[j] = rec.get("detail") or ""
    images: dict[str, Any]
    if tensors is not None:
        images = {"tensor": ArrowTensorArray.from_numpy(tensors)}
    else:
        pad = [bytes(max(0, DEVICE_ROW_FLOOR - len(b))) for b in payload]
        images = {"payload": pa.array(payload, pa.binary()), "pending": pa.array(pending), "pad": pa.array(pad)}
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
            **images,
        }
    )


class Encoder:
    """An encoder actor: the collection's model, loaded once, encoding decoded batches.

    ``gpu_decode``: batches come with ``payload`` / ``pending`` columns (device decoding, see the
    module docstring); the pending JPEGs are decoded here, on the model's device, a file that
    does not decode becoming a failure of its row. Output rows then carry ``on_device``: whether
    the device's JPEG decoder decoded the image."""

    def __init__(
        self,
        model_info: dict,
        device: str,
        precision: str,
        threads: int,
        gpu_decode: bool = False,
        max_pixels: int | None = None,
    ):
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
        self.decoder = None
        self.max_pixels = max_pixels
        if gpu_decode:
            from indexer.media.batch_decode import BatchDecoder

            cfg = self.model.preprocess_config
            self.decoder = BatchDecoder(cfg, str(self.model.device), max_pixels=max_pixels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        tensors = None
        if "payload" in batch:
            batch.pop("pad", None)
            try:
                tensors = self._decode(batch)
            except Exception as exc:  # e.g. out of GPU memory: the batch's items come back as failures
                _fail(batch, "decode", exc)
        else:
            tensors = torch.from_numpy(np.ascontiguousarray(batch.pop("tensor")))
        ok = np.asarray(batch["ok"], dtype=bool)
        vectors = np.zeros((len(ok), self.model.dimension), dtype=np.float32)
        if ok.any() and tensors is not None:
            try:
                vectors[ok] = self.model.encode_image_tensors(tensors[torch.from_numpy(np.flatnonzero(ok))])
            except Exception as exc:  # e.g. out of GPU memory: the batch's items come back as failures
                _fail(batch, "encode", exc)
        batch["vector"] = vectors
        return batch

    def _decode(self, batch: dict[str, np.ndarray]) -> Any:
        """The batch's images as one tensor (n, 3, S, S) on the model's device (zeros for rows not
        ok): pending JPEGs decoded here, the others from their payload; a JPEG that neither the
        device nor the CPU decoder reads turns its row into a failure."""
        import torch

        payload = batch.pop("payload")
        pending = np.asarray(batch.pop("pending"), dtype=bool)
        ok = np.asarray(batch["ok"], dtype=bool).copy()
        size = self.model.preprocess_config.size
        device = self.model.device
        out = torch.zeros((len(ok), 3, size, size), dtype=torch.float32, device=device)
        on_device = np.zeros(len(ok), dtype=bool)
        jpegs = np.flatnonzero(ok & pending)
        if jpegs.size:
            if self.decoder is None:
                from indexer.media.batch_decode import BatchDecoder

                self.decoder = BatchDecoder(self.model.preprocess_config, str(device), max_pixels=self.max_pixels)
            got = self.decoder.decode([bytes(payload[j]) for j in jpegs])
            if got.rows:
                out[torch.from_numpy(jpegs[got.rows])] = got.tensors.to(device)
            on_device[jpegs[got.device_rows]] = True
            if got.failures:
                stage, reason, detail = (np.array(batch[c], dtype=object) for c in ("stage", "reason", "detail"))
                for pos, exc in got.failures.items():
                    j = jpegs[pos]
                    ok[j], stage[j], reason[j], detail[j] = False, exc.stage, exc.reason, exc.detail
                batch["stage"], batch["reason"], batch["detail"] = stage, reason, detail
        decoded = np.flatnonzero(ok & ~pending)
        if decoded.size:  # decoded by the read task: one copy to the device for all of them
            rows = np.stack([np.frombuffer(payload[j], dtype=np.float32).reshape(3, size, size) for j in decoded])
            out[torch.from_numpy(decoded)] = torch.from_numpy(rows).to(device)
        batch["ok"] = ok
        batch["on_device"] = on_device
        return out


def _fail(batch: dict[str, np.ndarray], stage: str, exc: Exception) -> None:
    """The batch's ok items become ``worker-crashed`` failures at ``stage`` (their step failed for
    the whole batch); items that had failed already keep their own reason."""
    ok = np.asarray(batch["ok"], dtype=bool)
    batch["stage"] = np.where(ok, stage, batch["stage"]).astype(object)
    batch["reason"] = np.where(ok, "worker-crashed", batch["reason"]).astype(object)
    batch["detail"] = np.where(ok, f"{type(exc).__name__}: {exc}", batch["detail"]).astype(object)
    batch["ok"] = np.zeros_like(ok)
    batch.setdefault("on_device", np.zeros(len(ok), dtype=bool))


def dataset(ray: Any, feed: Any, model_info: dict, options: Any, p: RayPlan, gpu_decode: bool = False) -> Any:
    """The streaming pipeline: ``p.decoders`` decoders (read tasks) -> ``p.actors`` encoders.
    ``ray`` is the initialised ray module (with ray.data imported); ``gpu_decode``: plain JPEGs
    are decoded by the encoder actors, on their device."""
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
                ReadTask(lambda: _decoder(feed, preprocess, max_pixels, max_bytes, gpu_decode), meta)
                for _ in range(p.decoders)
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
            "gpu_decode": gpu_decode,
            "max_pixels": max_pixels,
        },
    )
    ctx = ds.context
    # A read task's output buffer holds what it yields until the buffer exceeds the target block
    # size. Just under one decoded block: every block goes on at once (a long-lived decoder must
    # not sit on finished images), and none is sliced.
    size = int(preprocess.get("size") or 224)
    row_bytes = DEVICE_ROW_FLOOR if gpu_decode else 3 * size * size * 4 + 256
    ctx.target_max_block_size = int(0.9 * p.decode_rows * row_bytes)
    ctx.max_errored_blocks = MAX_LOST_BLOCKS
    # The input is fed by the driver, which may pause for long (downloading a piece of URLs):
    # an idle pipeline is not a stuck one.
    ctx.execution_no_progress_timeout_s = -1
    ctx.enable_progress_bars = False
    return ds
