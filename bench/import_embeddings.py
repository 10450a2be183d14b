"""Importing precomputed embeddings: rows/s, peak memory against one shard's size, and the index built from them.

    python bench/import_embeddings.py [--rows 10000000] [--shard-rows 250000] [--dim 768] [--quick] [--keep DIR]

Writes TreeOfLife-200M-Embeddings-shaped Parquet shards (``uuid``, the seven ranks, ``basisOfRecord``,
``publisher``, ``identifier``, ``emb`` as ``list<float16>`` of ``--dim`` values, not normalised: clustered
unit vectors times a random norm of 5-20, as BioCLIP 2's raw outputs are), then measures, on the same
machine and in the same run:

1. the baseline: a plain pyarrow pass over the same shards in this process (``iter_batches`` of the vector
   and rank columns, float16 -> float32, L2-normalised): the floor any import pays for reading;
2. ``bioclip-index import SHARDS --out C --no-index`` as a subprocess (a random-weight model folder of the
   same dimension declares the model), sampling the PSS of its process tree every 50 ms: rows/s, the
   ratio to the baseline's rows/s, and the peak memory as a ratio to one shard's file size;
3. a rerun of the same command (every shard recorded as imported: nothing is read again);
4. ``bioclip-index reindex C``: the ANN index built from the imported vectors (type, seconds, peak memory,
   measured recall@10 on the collection's own vectors).

``--quick`` runs 200,000 rows in 4 shards. Needs about 2 x rows x dim x 2 bytes of disk (shards + the
collection): 10M x 768 is ~31 GB plus the index.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from _common import clustered_embeddings, machine  # noqa: E402
from peak_memory import tree_pss_mb  # noqa: E402


def write_shards(folder: Path, rows: int, shard_rows: int, dim: int, seed: int = 0) -> list[Path]:
    """TreeOfLife-shaped shards, written one at a time (memory: one shard)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from embfiles import RANK_NAMES, TOL_TAXA

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # Clustered like an image collection (bench/_common.clustered_embeddings' structure, made cheaply:
    # species centroids in a shared cone, per-image noise), 2,000 rows per species on average.
    centres = clustered_embeddings(max(8, rows // 2000), dim, seed=seed, per_cluster=1)
    paths = []
    for s, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        labels = rng.integers(0, len(centres), n)
        unit = centres[labels] + rng.standard_normal((n, dim), dtype=np.float32) * np.float32(0.6 / np.sqrt(dim))
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        raw = (unit * rng.uniform(5, 20, size=(n, 1)).astype(np.float32)).astype(np.float16)
        taxa = labels % len(TOL_TAXA)
        cols = {"uuid": pa.array([f"{start + i:012d}" for i in range(n)])}
        for j, rank in enumerate(RANK_NAMES):
            cols[rank] = pa.array([TOL_TAXA[t][j] for t in taxa]).dictionary_encode().cast(pa.string())
        cols["basisOfRecord"] = pa.array(["PRESERVED_SPECIMEN"] * n)
        cols["publisher"] = pa.array(["iNaturalist" if t % 2 else "Natural History Museum" for t in taxa])
        cols["identifier"] = pa.array([f"https://images.example.org/{start + i}.jpg" for i in range(n)])
        offsets = pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32))
        cols["emb"] = pa.ListArray.from_arrays(offsets, pa.array(raw.reshape(-1), pa.float16()))
        path = folder / f"part-{s:05d}.parquet"
        pq.write_table(pa.table(cols), path, row_group_size=50_000, compression="zstd")
        paths.append(path)
    return paths


def baseline(paths: list[Path], dim: int) -> float:
    """Seconds of a plain read + widen + normalise of every shard."""
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    for p in paths:
        for batch in pq.ParquetFile(p).iter_batches(batch_size=21_845, columns=["uuid", "emb", "genus", "species"]):
            v = batch.column("emb").flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
    return time.perf_counter() - t0


def run_measured(cmd: list[str]) -> tuple[float, float, str]:
    """(peak PSS of the process tree in MiB, seconds, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    peak = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_pss_mb(proc.pid))
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    stop.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[3:5])} failed: {err.decode()[-3000:]}")
    return peak, time.perf_counter() - t0, out.decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--shard-rows", type=int, default=250_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--quick", action="store_true", help="200,000 rows in 4 shards")
    ap.add_argument("--no-index", action="store_true", help="skip step 4")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.shard_rows = 200_000, 50_000
    from bioclip.testing import TINY_MODEL_CONFIG, write_random_model

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-import-"))
    work.mkdir(parents=True, exist_ok=True)
    need = 2 * args.rows * args.dim * 2
    free = shutil.disk_usage(work).free
    print(f"machine: {machine()}; {platform.node()}")
    print(f"data: {args.rows:,} x {args.dim} float16, not normalised, {args.shard_rows:,} rows per shard, with ranks")
    if need > free:
        raise SystemExit(f"needs ~{need / 2**30:.1f} GiB of disk in {work}, {free / 2**30:.1f} GiB free: use --rows")
    try:
        cfg = json.loads(json.dumps(TINY_MODEL_CONFIG))
        cfg["embed_dim"] = args.dim
        model = write_random_model(work / "model", cfg)
        t0 = time.perf_counter()
        shards = write_shards(work / "shards", args.rows, args.shard_rows, args.dim)
        shard_mib = max(p.stat().st_size for p in shards) / 2**20
        total_mib = sum(p.stat().st_size for p in shards) / 2**20
        print(
            f"wrote {len(shards)} shards ({total_mib:,.0f} MiB, largest {shard_mib:,.0f} MiB) in {time.perf_counter() - t0:.0f}s"
        )

        base_s = baseline(shards, args.dim)
        base_rps = args.rows / base_s
        cli = [sys.executable, "-c", "from indexer.cli.index import main; main()"]
        imp = [*cli, "import", str(work / "shards"), "--out", str(work / "col"), "--model", f"local-dir:{model}"]
        imp += ["--no-index", "--no-progress", "--json"]
        peak, secs, out = run_measured(imp)
        report = json.loads(out[out.index("{") :])
        assert report["imported"] == args.rows and report["renormalised"] == args.rows, report
        rps = args.rows / secs
        peak2, secs2, out2 = run_measured(imp)
        again = json.loads(out2[out2.index("{") :])
        rows = [
            ("baseline: pyarrow read + normalise (in process)", f"{base_rps:,.0f}", "-", "-"),
            ("bioclip-index import (subprocess, wall)", f"{rps:,.0f}", f"{peak:,.0f}", f"{peak / shard_mib:.2f}"),
            ("rerun: all shards skipped", f"{args.rows / secs2:,.0f}", f"{peak2:,.0f}", f"{peak2 / shard_mib:.2f}"),
        ]
        print(f"\n{'run':50s} {'rows/s':>12s} {'peak PSS MiB':>13s} {'/ shard':>8s}")
        for r in rows:
            print(f"{r[0]:50s} {r[1]:>12s} {r[2]:>13s} {r[3]:>8s}")
        print(
            f"import / baseline rows/s: {rps / base_rps:.3f}; peak memory / largest shard file ({shard_mib:,.0f} MiB): "
            f"{peak / shard_mib:.2f}; rerun skipped {again['files_skipped']} of {again['files']} files in {secs2:.1f}s"
        )
        col_mib = sum(f.stat().st_size for f in (work / "col").rglob("*") if f.is_file()) / 2**20
        print(f"collection on disk: {col_mib:,.0f} MiB ({col_mib * 2**20 / args.rows:,.0f} bytes per image)")
        if not args.no_index:
            peak_i, secs_i, out_i = run_measured([*cli, "reindex", str(work / "col")])
            info = json.loads((sorted((work / "col" / "generations").glob("gen-*.json"))[-1]).read_text())["index"]
            rec = (info.get("info") or {}).get("measured_recall")
            print(
                f"index from the imported vectors: {info['factory']}, {secs_i:.0f}s, peak PSS {peak_i:,.0f} MiB, "
                f"recall@10 {rec} (image queries: the collection's own vectors, own id excluded)"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
