"""Encoding throughput of the batch indexer against the forward-pass ceiling and a plain loop.

    python bench/encode_throughput.py [--arch ViT-B-16] [--big 12] [--batch-size 32] [--device cpu]

Model: random-init weights of BioCLIP's architecture (ViT-B-16, ``random:ViT-B-16``): same cost
as BioCLIP, no download. Images: the real photos in ../shared/data (camera traps, fish, cats) and
``--big`` generated 20-megapixel JPEGs (5472 x 3648, like a DSLR or a herbarium scan). For each set,
measured in this one process so the ratios hold on a noisy machine:

  (a) forward pass alone on pre-made tensors (the ceiling);
  (b) a plain loop a user would write: PIL open, open_clip's own preprocess, encode, same batch size;
  (c) ``bioclip-index build`` end to end through ``indexer.build.build`` (scan, read, decode,
      preprocess in workers, encode, commit, index), with the model already loaded; and
  (c') the ``bioclip-index build`` command as a subprocess, Python start and model load included.

Targets on a 2-core machine: c >= 0.85 x a; c >= 1.3 x b (c >= 2 x b on the 20-megapixel JPEGs).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
EXTS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif"}


def real_images(dest: Path) -> list[Path]:
    """Copy the real sample photos (minus the deliberately truncated one) into ``dest``."""
    out = []
    for folder in ("images-cameratrap-speciesnet", "images-fish-fishnet-egu2017", "images-cats-packaged"):
        src = SHARED / folder
        if not src.is_dir():
            continue
        for p in sorted(src.rglob("*")):
            if p.suffix.lower() in EXTS and "truncated" not in p.name:
                target = dest / folder / p.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(p, target)
                out.append(target)
    return out


def big_jpegs(dest: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` 20-megapixel (5472 x 3648) JPEGs like a DSLR's: real photos from the sample collection,
    upscaled, with sensor-like noise, saved at quality 92 (about 9 MB each)."""
    from PIL import Image

    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = sorted((ROOT / "indexer" / "sample" / "images" / "cameratrap").glob("*.jpg"))
    bases = []
    for p in photos:
        try:
            with Image.open(p) as im:
                bases.append(im.convert("RGB").resize((5472, 3648), Image.BICUBIC))
        except OSError:
            continue  # the deliberately truncated sample
    out = []
    for i in range(n):
        base = np.asarray(bases[i % len(bases)], dtype=np.int16)
        noisy = base + rng.normal(0, 8, (3648, 5472, 1)).astype(np.int16)
        p = dest / f"big_{i:03d}.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(p, quality=92)
        out.append(p)
    return out


def warm_cache(paths: list[Path]) -> None:
    """Read every file once, so no measurement pays for cold disk reads that the others skip."""
    for p in paths:
        p.read_bytes()


def forward_only(model, n: int, batch: int) -> float:
    import torch

    x = torch.randn(batch, 3, model.preprocess_config.size, model.preprocess_config.size)
    model.encode_image_tensors(x[:2])  # warm up
    done, t0 = 0, time.perf_counter()
    while done < n:
        b = min(batch, n - done)
        model.encode_image_tensors(x[:b])
        done += b
    return n / (time.perf_counter() - t0)


def plain_loop(model, paths: list[Path], batch: int) -> float:
    """What a user writes with open_clip: PIL open, the model's own preprocess, encode."""
    import open_clip
    import torch
    from PIL import Image

    preprocess = open_clip.image_transform(model.preprocess_config.size, is_train=False)
    net = model.torch_model
    t0 = time.perf_counter()
    for i in range(0, len(paths), batch):
        imgs = [preprocess(Image.open(p).convert("RGB")) for p in paths[i : i + batch]]
        with torch.inference_mode():
            f = net.encode_image(torch.stack(imgs))
            f = f / f.norm(dim=-1, keepdim=True)
        f.numpy()
    return len(paths) / (time.perf_counter() - t0)


def pipeline_build(model, folder: Path, batch: int, workdir: Path, workers: int | None = None) -> tuple[float, dict]:
    from indexer.build import BuildOptions, build
    from indexer.build.sources import FolderSource

    col = workdir / f"col-{folder.name}"
    shutil.rmtree(col, ignore_errors=True)
    t0 = time.perf_counter()
    report = build(col, [FolderSource(folder)], model=model, options=BuildOptions(batch_size=batch, workers=workers))
    dt = time.perf_counter() - t0
    return report.encoded / dt, report.to_dict()


def cli_build(arch: str, folder: Path, batch: int, workdir: Path, device: str) -> float:
    col = workdir / f"cli-{folder.name}"
    shutil.rmtree(col, ignore_errors=True)
    n = sum(1 for p in folder.rglob("*") if p.suffix.lower() in EXTS)
    cmd = [
        sys.executable,
        "-c",
        "from indexer.cli.index import main; main()",
        "build",
        str(folder),
        "--out",
        str(col),
        "--model",
        f"random:{arch}",
        "--batch-size",
        str(batch),
        "--device",
        device,
        "--no-progress",
        "-q",
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B-16")
    ap.add_argument("--big", type=int, default=40, help="number of generated 20-megapixel JPEGs")
    ap.add_argument("--batch-size", type=int, default=8, help="the indexer's CPU default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--limit", type=int, default=0, help="use at most this many real images (0: all)")
    ap.add_argument("--sets", default="real,camera,big", help="which image sets: real, camera, big")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved repetitions; ratios are per-round medians")
    ap.add_argument("--workers", type=int, default=None, help="decode workers for (c) (default: the indexer's choice)")
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    import torch

    from bioclip import load_model

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, device {args.device}"
    )
    model = load_model(f"random:{args.arch}", device=args.device)
    work = Path(tempfile.mkdtemp(prefix="bench-encode-"))
    try:
        real = real_images(work / "real")
        if args.limit:
            for p in real[args.limit :]:
                p.unlink()
            real = real[: args.limit]
        big = big_jpegs(work / "big", args.big if "big" in args.sets else 0)
        print(
            f"images: {len(real)} real photos from {SHARED} (13 of them camera-trap JPEGs of 1-3 MP, the rest small PNG crops), {len(big)} generated 20 MP JPEGs; batch {args.batch_size}"
        )
        camera = sorted((work / "real" / "images-cameratrap-speciesnet").glob("*.jpg"))
        rows = []
        sets = (
            ("real photos", work / "real", real),
            ("camera traps", work / "real" / "images-cameratrap-speciesnet", camera),
            ("20 MP JPEGs", work / "big", big),
        )
        wanted = {"real": "real photos", "camera": "camera traps", "big": "20 MP JPEGs"}
        sets = tuple(x for x in sets if x[0] in {wanted[w] for w in args.sets.split(",")})
        for name, folder, paths in sets:
            if not paths:
                print(f"{name}: none found, skipped")
                continue
            # Interleave the measurements, so load from other processes hits them alike.
            warm_cache(paths)
            runs = []
            for _ in range(args.rounds):
                a1 = forward_only(model, len(paths), args.batch_size)
                b = plain_loop(model, paths, args.batch_size)
                c, rep = pipeline_build(model, folder, args.batch_size, work, args.workers)
                a2 = forward_only(model, len(paths), args.batch_size)
                runs.append(((a1 + a2) / 2, b, c, rep))
            c_cli = cli_build(args.arch, folder, args.batch_size, work, args.device)
            rows.append((name, len(paths), runs, c_cli))
        print()
        print(
            f"{'set':14s} {'n':>5s} {'a forward':>10s} {'b plain':>9s} {'c build':>9s} {'c CLI':>8s} {'c/a':>6s} {'c/b':>6s}"
        )
        for name, n, runs, c_cli in rows:
            for i, (a, b, c, _rep) in enumerate(runs):
                cli = f"{c_cli:8.2f}" if i == len(runs) - 1 else f"{'':8s}"
                print(f"{name:14s} {n:5d} {a:10.2f} {b:9.2f} {c:9.2f} {cli} {c / a:6.2f} {c / b:6.2f}")
        print("(images/s; a = mean of a forward-only run before and after b and c; c = indexer.build.build with the")
        print(" model loaded; c CLI = the bioclip-index command as a subprocess, start-up and model creation included)")
        for name, _n, runs, _c_cli in rows:
            target_b = 2.0 if "20 MP" in name else 1.3
            ca = float(np.median([c / a for a, b, c, _ in runs]))
            cb = float(np.median([c / b for a, b, c, _ in runs]))
            rep = runs[-1][3]
            print(
                f"{name}: median c/a {ca:.2f} (target >= 0.85: {'met' if ca >= 0.85 else 'MISSED'}), "
                f"median c/b {cb:.2f} (target >= {target_b}: {'met' if cb >= target_b else 'MISSED'}); "
                f"failed {rep['failed']}, encode share of build time {rep['encode_seconds'] / rep['seconds']:.0%}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
