"""Curating a collection: time and peak memory of a full curation as a ratio to one pass of ANN
search over the same vectors, and of an incremental curation after adding 1% new images as a ratio
to the full run.

    python bench/curate.py [--rows 1000000] [--dim 512] [--species 200] [--quick] [--keep DIR]

Builds the collection from vectors through the embeddings import (clustered like an image
collection: species centroids in a shared cone, per-image noise; the seven ranks from the species),
with a random-weight model of the same dimension declaring the model (its text embeddings of the
collection's species are computed once before the timed runs: they are cached per model, as a
curator's second run finds them). Then, in this one process:

1. the baseline: ``SearchEngine.knn`` over every vector of the collection (k = 11), in batches of
   16,384: one pass of ANN search over the same vectors;
2. ``curate(C, full=True)``: fingerprints, predictions, neighbours (k = 10), the state written;
3. the four lists computed from it (seconds each);
4. 1% new vectors imported, then ``curate(C)``: the incremental update.

Peak memory is this process's VmHWM, reset before each step (``/proc/self/clear_refs``), minus its
resident memory at the step's start. ``--quick``: 50,000 rows. 1M rows take the better part of an
hour on 2 shared cores; run it with nohup and a log.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _common import clustered_embeddings, machine, print_table  # noqa: E402

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


def _hwm_reset() -> float:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status("VmRSS")


def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_since(base: float) -> float:
    return _status("VmHWM") - base


def lineage(s: int) -> list[str]:
    o, f, g = s // 40, s // 10, s // 2
    return [
        "Animalia",
        "Arthropoda",
        "Insecta",
        f"Order{o:03d}",
        f"Family{f:04d}",
        f"Genus{g:05d}",
        f"Genus{g:05d} sp{s:05d}",
    ]


def write_shards(folder: Path, start: int, n: int, d: int, species: int, seed: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = clustered_embeddings(species, d, seed=1, per_cluster=1)
    step = 250_000
    for lo in range(0, n, step):
        m = min(step, n - lo)
        lab = rng.integers(0, species, m)
        v = centres[lab] + rng.standard_normal((m, d), dtype=np.float32) * np.float32(0.5 / np.sqrt(d))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        cols = {"uuid": pa.array([f"u{start + lo + i:010d}" for i in range(m)])}
        names = [lineage(int(s)) for s in lab]
        for j, rank in enumerate(RANKS):
            cols[rank] = pa.array([x[j] for x in names])
        offsets = pa.array(np.arange(0, m * d + 1, d, dtype=np.int32))
        cols["emb"] = pa.ListArray.from_arrays(offsets, pa.array(v.astype(np.float16).reshape(-1), pa.float16()))
        pq.write_table(pa.table(cols), folder / f"part-{start + lo:010d}.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--species", type=int, default=200)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()
    rows = 50_000 if args.quick else args.rows
    from bioclip import load_model
    from bioclip.testing import TINY_MODEL_CONFIG, write_random_model
    from indexer.build.importers import DeclaredModel, ImportOptions, import_embeddings
    from indexer.curate import CurateOptions, Curation, curate
    from indexer.curate.labels import label_set
    from indexer.curate.store import CurationStore
    from indexer.search.engine import SearchEngine
    from indexer.store import Collection

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-curate-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    cfg = {**TINY_MODEL_CONFIG, "embed_dim": args.dim}
    model = load_model(f"local-dir:{write_random_model(work / 'model', cfg)}", device="cpu")
    t0 = time.perf_counter()
    write_shards(work / "emb", 0, rows, args.dim, args.species, seed=0)
    col_path = work / "c.collection"
    import_embeddings(col_path, [str(work / "emb")], model=DeclaredModel(model=model), options=ImportOptions())
    print(
        f"collection: {rows:,} vectors ({args.dim}-d), {args.species} species, built in {time.perf_counter() - t0:.0f}s"
    )
    engine = SearchEngine(Collection.open(col_path), model=model, refresh_interval=None)
    t0 = time.perf_counter()
    label_set(engine, CurationStore(engine.collection))
    print(
        f"text embeddings of the {args.species} species (80 templates, once per model): {time.perf_counter() - t0:.0f}s"
    )
    print(f"index: {(engine.collection.latest_generation().index or {}).get('info', {}).get('factory', 'exact')}")

    # 1. the baseline: one pass of ANN search over every vector
    snap = engine.collection.snapshot()
    ids, vecs = snap.load_vectors()
    base = _hwm_reset()
    t0 = time.perf_counter()
    for lo in range(0, len(ids), 16_384):
        engine.knn(vecs[lo : lo + 16_384], 11)
    t_ann = time.perf_counter() - t0
    m_ann = _peak_since(base)
    del vecs

    # 2. full curation
    base = _hwm_reset()
    t0 = time.perf_counter()
    full = curate(engine, options=CurateOptions(full=True))
    t_full = time.perf_counter() - t0
    m_full = _peak_since(base)

    # 3. the lists
    cur = Curation.open(engine)
    list_rows = []
    for kind in ("misidentified", "unidentified", "duplicates", "outliers"):
        t0 = time.perf_counter()
        n = len(cur.entries(kind))
        list_rows.append((kind, n, time.perf_counter() - t0))

    # 4. incremental after 1% new images
    extra = max(1, rows // 100)
    write_shards(work / "more", rows, extra, args.dim, args.species, seed=7)
    import_embeddings(col_path, [str(work / "more")], model=DeclaredModel(model=model))
    engine.refresh(force=True)
    base = _hwm_reset()
    t0 = time.perf_counter()
    inc = curate(engine)
    t_inc = time.perf_counter() - t0
    m_inc = _peak_since(base)
    assert not inc.full and inc.searched == extra, inc

    print_table(
        f"Curating {rows:,} images (k=10) against one ANN pass over the same vectors (k=11)",
        ["run", "seconds", "ratio", "peak MiB", "ratio"],
        [
            ("ANN search, every vector (baseline)", t_ann, 1.0, m_ann, 1.0),
            (f"curate, full ({full.images:,} images)", t_full, t_full / t_ann, m_full, m_full / max(m_ann, 1)),
            (f"curate, incremental (+{extra:,}, 1%)", t_inc, t_inc / t_full, m_inc, m_inc / max(m_full, 1)),
        ],
    )
    print("(the incremental row's ratios are to the full run)")
    print_table("The lists, computed from the stored state", ["list", "entries", "seconds"], list_rows)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
