"""GPU encoding throughput: ViT-B-16 (BioCLIP) and ViT-L-14 (BioCLIP 2) in bf16, as a fraction of the
measured bf16 matrix ceiling.

    python bench/gpu_throughput.py [--device cuda] [--batch-size 256] [--seconds 20] [--images 2000]

For each architecture (random-init weights, same cost as the real models):
  - the bf16 matrix ceiling of this GPU, measured with large square matmuls (TFLOP/s);
  - forward-only images/s on pre-made tensors under bf16 autocast, and the achieved TFLOP/s using
    35.1 GFLOP per image for ViT-B/16 at 224 px and 162 GFLOP for ViT-L/14 (2 x multiply-adds),
    printed as a fraction of the ceiling;
  - ``indexer.build.build`` end to end on ``--images`` generated JPEGs (decode workers, pinned
    memory, autocast), as images/s and as a ratio to forward-only;
  - JPEG files on disk -> model input -> vectors with ``indexer.media.batch_decode.BatchDecoder``:
    decoded by the GPU's JPEG decoder (nvJPEG, batched) and resized there, against the same files
    decoded on the CPU (one process) and resized on the GPU; images/s of decoding alone and of
    decoding + encoding, and the peak GPU memory.

On a CPU (``--device cpu --quick``) it runs the same code with small sizes, to check the script.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

GFLOP_PER_IMAGE = {"ViT-B-16": 35.1, "ViT-L-14": 162.0}


def matmul_ceiling(device: str, dtype, n: int, seconds: float) -> float:
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ b
        _sync(device)
        count += 10
    dt = time.perf_counter() - t0
    return 2 * n**3 * count / dt / 1e12


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def forward_rate(model, batch: int, seconds: float) -> float:
    import torch

    size = model.preprocess_config.size
    x = torch.randn(batch, 3, size, size, device=model.device)
    if str(model.device).startswith("cuda"):
        x = x.pin_memory() if x.device.type == "cpu" else x
    model.encode_image_tensors(x)  # warm-up (cuDNN / autotuning)
    _sync(str(model.device))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.encode_image_tensors(x)
        n += batch
    _sync(str(model.device))
    return n / (time.perf_counter() - t0)


def make_images(dest: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((1024, 768), Image.BILINEAR).save(dest / f"img_{i:05d}.jpg", quality=90)


def decode_rates(model, files: list[Path], batch: int) -> dict[str, float]:
    """images/s: decode only (GPU JPEG decoder, CPU decoder) and decode + encode, from files on disk."""
    import torch

    from indexer.media.batch_decode import BatchDecoder

    out = {}
    dev = str(model.device)
    for label, gpu_jpeg in (("gpu", True), ("cpu", False)):
        decoder = BatchDecoder(model.preprocess_config, device=dev, gpu_jpeg=gpu_jpeg)
        for encode in (False, True):
            n, t0 = 0, time.perf_counter()
            for a in range(0, len(files), batch):
                datas = [p.read_bytes() for p in files[a : a + batch]]
                decoded = decoder.decode(datas)
                if encode and decoded.rows:
                    model.encode_image_tensors(decoded.tensors)
                n += len(decoded.rows)
            _sync(dev)
            out[f"{label}_{'encode' if encode else 'decode'}"] = n / (time.perf_counter() - t0)
    if dev.startswith("cuda"):
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--archs", default="ViT-B-16,ViT-L-14")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script on a CPU")
    args = ap.parse_args()
    if args.quick:
        args.batch_size, args.seconds, args.images = 4, 2.0, 16
    import torch

    from bioclip import load_model
    from indexer.build import BuildOptions, build
    from indexer.build.sources import FolderSource

    dev = args.device
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    ceiling = matmul_ceiling(dev, dtype, 512 if args.quick else 8192, args.seconds / 2)
    print(
        f"device: {name}; torch {torch.__version__}; {'bf16' if dtype == torch.bfloat16 else 'fp32'} matmul ceiling {ceiling:.1f} TFLOP/s"
    )
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        make_images(work / "imgs", args.images)
        print(
            f"{'arch':10s} {'forward img/s':>14s} {'TFLOP/s':>8s} {'of ceiling':>10s} {'build img/s':>12s} {'build/forward':>14s}"
        )
        for arch in args.archs.split(","):
            model = load_model(f"random:{arch}", device=dev, precision="bf16" if dev.startswith("cuda") else "fp32")
            fwd = forward_rate(model, args.batch_size, args.seconds)
            tflops = fwd * GFLOP_PER_IMAGE.get(arch, float("nan")) / 1000
            col = work / f"col-{arch}"
            t0 = time.perf_counter()
            report = build(
                col,
                [FolderSource(work / "imgs")],
                model=model,
                options=BuildOptions(batch_size=args.batch_size, build_index=False),
            )
            rate = report.encoded / (time.perf_counter() - t0)
            print(f"{arch:10s} {fwd:14.1f} {tflops:8.1f} {tflops / ceiling:10.1%} {rate:12.1f} {rate / fwd:14.2f}")
            files = sorted((work / "imgs").glob("*.jpg"))
            rates = decode_rates(model, files, args.batch_size)
            print(
                f"{'':10s} from JPEG files: GPU decode {rates['gpu_decode']:.1f} img/s, CPU decode {rates['cpu_decode']:.1f} "
                f"(ratio {rates['gpu_decode'] / rates['cpu_decode']:.2f}); decode + encode: GPU decode "
                f"{rates['gpu_encode']:.1f} img/s ({rates['gpu_encode'] / fwd:.2f} of forward-only), CPU decode "
                f"{rates['cpu_encode']:.1f}"
                + (f"; peak GPU memory {rates['peak_gpu_gib']:.2f} GiB" if "peak_gpu_gib" in rates else "")
            )
            shutil.rmtree(col, ignore_errors=True)
            del model
            if dev.startswith("cuda"):
                torch.cuda.empty_cache()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
