"""Metadata-edit benchmark: what a label fix over a whole collection costs, ids kept vs ids renewed.

    python bench/metadata_edit.py                 # 200,000 images, 512-d, every label edited
    python bench/metadata_edit.py --n 50000       # a quick run
    python bench/metadata_edit.py --edit 0.01     # 1% of the labels edited

A synthetic collection (``--n`` clustered, L2-normalised vectors from bench/_common.py, a few
Darwin Core columns) is written through the collection Writer (nothing is encoded), with its ANN
index. Two copies then get the same edit (``--edit``: the fraction of images whose catalogNumber
changes, as a build does when a labels CSV is corrected), committed the two ways:

  (new)      ``Writer.update``: superseding metadata rows under the same ids (the image keeps its
             id; its vector stays in its segment; the ANN index is not touched).
  (baseline) what builds did before: the edited rows re-added with their stored vectors (new ids)
             and the old ids retired; the ANN index then adds the re-added vectors.

Reported for each, measured in this one run (the machine may be shared: compare the ratios): the
commit (seconds, bytes written), bringing the ANN index up to date, opening the edited collection
in a SearchEngine (a reader's first view), fetching 1,000 images by id, and a filtered listing
(catalogNumber prefix), with the ratio new / baseline. Ids kept by the new way and lost by the
baseline are counted.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import clustered_embeddings, latency_ms, machine, print_table  # noqa: E402

D = 512
CHUNK = 50_000
TAXA = ["Corvus corax", "Pica pica", "Vulpes vulpes", "Rosa canina", "Quercus robur", "Apis mellifera"]


def rows(start: int, n: int, suffix: str = "") -> pa.Table:
    i = np.arange(start, start + n)
    return pa.table(
        {
            "key": [f"/data/img/{k:08d}.jpg" for k in i],
            "source": ["/data/img"] * n,
            "location": [f"/data/img/{k:08d}.jpg" for k in i],
            "size": pa.array(np.full(n, 123_456), pa.int64()),
            "mtime": pa.array(np.full(n, 1.7e9), pa.float64()),
            "sha256": [f"{k:064x}" for k in i],
            "catalogNumber": [f"CAT-{k}{suffix}" for k in i],
            "scientificName": [TAXA[k % len(TAXA)] for k in i],
            "country": [("Kenya", "Peru", "France", "Japan")[k % 4] for k in i],
            "year": pa.array(1900 + (i % 120), pa.int32()),
        }
    )


def make(path: Path, n: int) -> None:
    from indexer.ann import update_index
    from indexer.store import Collection

    model = {"name": "synthetic", "source": "synthetic", "dimension": D, "preprocess": {}}
    coll = Collection.create(path, model, dimension=D)
    vecs = clustered_embeddings(n, D, seed=0)
    with coll.writer() as w:
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            w.add(rows(start, m), vecs[start : start + m])
            w.commit()
        update_index(w)


def edit(path: Path, ids: np.ndarray, keep_ids: bool) -> dict:
    """Edit the catalogNumber of ``ids`` (the ids of images 0..n-1 are 0..n-1), one way or the other."""
    from indexer.ann import update_index
    from indexer.store import Collection

    before = _disk_bytes(path)
    coll = Collection.open(path)
    with coll.writer() as w:
        t0 = time.perf_counter()
        for start in range(0, ids.size, CHUNK):
            part = ids[start : start + CHUNK]
            table = _rows_of(part)
            if keep_ids:
                w.update(table, part)
            else:
                w.add(table, w.snapshot().get_vectors(part))
                w.retire(part, reason="changed")
        w.commit()
        commit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        update_index(w)
        index_s = time.perf_counter() - t0
    return {"commit_s": commit_s, "index_s": index_s, "written_mib": (_disk_bytes(path) - before) / 2**20}


def _rows_of(ids: np.ndarray) -> pa.Table:
    """The edited rows of images ``ids``."""
    n = ids.size
    return pa.table(
        {
            "key": [f"/data/img/{k:08d}.jpg" for k in ids],
            "source": ["/data/img"] * n,
            "location": [f"/data/img/{k:08d}.jpg" for k in ids],
            "size": pa.array(np.full(n, 123_456), pa.int64()),
            "mtime": pa.array(np.full(n, 1.7e9), pa.float64()),
            "sha256": [f"{k:064x}" for k in ids],
            "catalogNumber": [f"CAT-{k}-fixed" for k in ids],
            "scientificName": [TAXA[k % len(TAXA)] for k in ids],
            "country": [("Kenya", "Peru", "France", "Japan")[k % 4] for k in ids],
            "year": pa.array(1900 + (ids % 120), pa.int32()),
        }
    )


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def read_side(path: Path, n: int, rng: np.random.Generator) -> dict:
    from indexer.search.engine import SearchEngine
    from indexer.search.filters import parse_where
    from indexer.store import Collection

    t0 = time.perf_counter()
    engine = SearchEngine.open(path, refresh_interval=None)
    engine.get([0])
    open_s = time.perf_counter() - t0
    # The images' current ids (the baseline renewed them): the same 1,000 images both ways.
    live = np.sort(Collection.open(path).snapshot().connect().execute("SELECT id FROM images").fetchnumpy()["id"])
    picks = [rng.choice(live, 1000, replace=False).tolist() for _ in range(20)]
    get_ms, _ = latency_ms(lambda i: engine.get(picks[i % len(picks)]), 20)
    flt = parse_where(["catalogNumber~CAT-12"])
    browse_ms, _ = latency_ms(lambda i: engine.browse(flt, k=50, offset=50 * (i % 4)), 20)
    return {"open_s": open_s, "get_ms": get_ms, "browse_ms": browse_ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--edit", type=float, default=1.0, help="fraction of the images whose label is edited")
    args = ap.parse_args()
    from indexer.store import Collection

    print(f"machine: {machine()}")
    work = Path(tempfile.mkdtemp(prefix="bench-edit-"))
    try:
        base = work / "base"
        t0 = time.perf_counter()
        make(base, args.n)
        print(f"collection of {args.n:,} images, {D}-d, with its index: {time.perf_counter() - t0:.0f}s")
        rng = np.random.default_rng(7)
        m = max(1, int(round(args.n * args.edit)))
        ids = np.sort(rng.choice(args.n, m, replace=False)).astype(np.int64)
        results = {}
        for name, keep in (("new (ids kept)", True), ("baseline (ids renewed)", False)):
            path = work / ("new" if keep else "old")
            shutil.copytree(base, path)
            w = edit(path, ids, keep)
            w.update(read_side(path, args.n, np.random.default_rng(3)))
            live = (
                Collection.open(path).snapshot().connect().execute("SELECT count(*) FROM images WHERE id < ?", [args.n])
            )
            w["ids_kept"] = int(live.fetchall()[0][0])
            results[name] = w
        new, old = results["new (ids kept)"], results["baseline (ids renewed)"]
        keys = [
            ("commit_s", "commit (s)"),
            ("written_mib", "written (MiB)"),
            ("index_s", "index update (s)"),
            ("open_s", "reader open (s)"),
            ("get_ms", "get 1,000 by id p50 (ms)"),
            ("browse_ms", "filtered listing p50 (ms)"),
        ]
        table = [[label, new[k], old[k], new[k] / old[k] if old[k] else float("nan")] for k, label in keys]
        table.append(["ids still valid", f"{new['ids_kept']:,}", f"{old['ids_kept']:,}", ""])
        print_table(
            f"editing the labels of {m:,} of {args.n:,} images (one commit)",
            ["", "new (ids kept)", "baseline (ids renewed)", "new / baseline"],
            table,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
