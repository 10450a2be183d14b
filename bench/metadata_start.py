"""Starting a search process on a large collection: the full metadata load against the persisted file.

    python bench/metadata_start.py [--rows 2000000] [--quick]

A collection of ``--rows`` Darwin Core rows (``metadata_scale.rows_table``: seven ranks over
~rows/100 species with Pareto-skewed sizes, 40 institutions, 150 countries, image URLs with shared
prefixes) and 8-d vectors (the vectors play no part here), written through the collection writer in
commits of 250,000 rows. Then, each in one process and as ratios to the first:

  full load        what a search process did before: read every segment, sort by taxonomy,
                   compress (``indexer.search.state.load_state`` with the persisted file off);
  load + persist   the first process on a generation: the same, then the finished database
                   written to ``COLLECTION/metadata/`` (``indexer.search.metadata_file``);
  from the file    the next process: a private copy of the file, attached;
  file + 1% new    a process on a later generation with 1% more rows: the older file plus the
                   new segment, as a running engine applies a new generation.

For each: wall time, DuckDB's memory after a ~0.1% filter (a genus and 10 of 40 institutions) and a
page of 20 hits, and those two queries' median times (the file-backed database serves them from its
buffer pool).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import machine, print_table  # noqa: E402
from metadata_scale import rows_table, timed  # noqa: E402

from indexer.search import metadata_file  # noqa: E402
from indexer.search.filters import Filter  # noqa: E402
from indexer.search.state import StateOptions, load_state  # noqa: E402
from indexer.store import Collection  # noqa: E402

COMMIT_ROWS = 250_000
DIMENSION = 8


def collection_rows(table):
    """The benchmark table as collection rows (key, location, Darwin Core columns)."""
    import pyarrow as pa

    n = table.num_rows
    keys = pa.array(np.char.mod("img-%d", table.column("id").to_numpy()).astype(object))
    return pa.table(
        {
            "key": keys,
            "location": table.column("url"),
            **{c: table.column(c) for c in ("kingdom", "phylum", "class", "order", "family", "genus")},
            "specificEpithet": table.column("specificEpithet"),
            "institutionCode": table.column("institutionCode"),
            "basisOfRecord": table.column("basisOfRecord"),
            "countryCode": table.column("countryCode"),
            "year": pa.array(table.column("year").to_numpy().astype(str).astype(object)),
        }
    ).slice(0, n)


def write(c: Collection, rows, rng: np.random.Generator) -> None:
    with c.writer() as w:
        for start in range(0, rows.num_rows, COMMIT_ROWS):
            part = rows.slice(start, COMMIT_ROWS)
            vecs = rng.standard_normal((part.num_rows, DIMENSION)).astype(np.float32)
            w.add(part, vecs / np.linalg.norm(vecs, axis=1, keepdims=True))
            w.commit()


def serve(c: Collection, label: str, options: StateOptions, flt: Filter, page: list[int]) -> list:
    gen = c.latest_generation_number()
    gc.collect()
    t0 = time.perf_counter()
    state = load_state(c, gen, None, options)
    wall = time.perf_counter() - t0
    allowed = state.allowed(flt)[0]
    state.metadata(page)
    mem = state.cursor().execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchall()[0][0]
    state.filters = type(state.filters)(0)  # no cache: time the SQL each time
    filt = timed(lambda: state.allowed(flt))
    look = timed(lambda: state.metadata(page))
    rows = state.cursor().execute("SELECT count(*) FROM images").fetchone()[0]
    return [label, rows, round(wall, 2), round(mem / 2**20, 1), allowed.size, round(filt, 2), round(look, 2)]


def main() -> None:
    import duckdb

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 200_000 if args.quick else args.rows
    metadata_file.METADATA_FILE_MIN_ROWS = min(metadata_file.METADATA_FILE_MIN_ROWS, n)
    print(f"machine: {machine()}, duckdb {duckdb.__version__}")
    table = rows_table(n + n // 100)
    rows = collection_rows(table)
    counts = table.slice(0, n).group_by("genus").aggregate([("id", "count")]).to_pydict()
    share = np.array(counts["id_count"]) / n
    genus = counts["genus"][int(np.argmin(np.abs(share - 0.004)))]  # ~0.4% x 10 of 40 institutions: ~0.1%
    flt = Filter.from_mapping({"genus": genus, "institutionCode": [f"INST{i:06d}" for i in range(10)]})
    rng = np.random.default_rng(0)
    page = rng.choice(n, size=20, replace=False).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        c = Collection.create(Path(tmp) / "col", {"name": "bench", "source": "bench:none"}, dimension=DIMENSION)
        t0 = time.perf_counter()
        write(c, rows.slice(0, n), rng)
        print(f"wrote {n:,} rows in {time.perf_counter() - t0:.1f} s ({-(-n // COMMIT_ROWS)} commits)")
        out = [serve(c, "full load", StateOptions(metadata_file=False), flt, page)]
        out.append(serve(c, "load + persist", StateOptions(), flt, page))
        (saved,) = (c.path / "metadata").glob("served-*.duckdb")
        size = saved.stat().st_size
        out.append(serve(c, "from the file", StateOptions(), flt, page))
        write(c, rows.slice(n, n // 100), rng)
        out.append(serve(c, "file + 1% new", StateOptions(), flt, page))
        out.append(serve(c, "full load (+1%)", StateOptions(metadata_file=False), flt, page))
    print_table(
        f"starting a search process on {n:,} rows: the metadata (median ms for the queries)",
        ["start", "rows", "wall s", "DuckDB MiB", "allowed", "0.1% filter ms", "page of 20 ms"],
        out,
    )
    print(f"persisted file: {size / 2**20:.1f} MiB")
    base = out[0]
    for row, ref in ((out[1], base), (out[2], base), (out[3], out[4])):
        print(f"{row[0]} / {ref[0]}: start {row[2] / ref[2]:.3f}, memory {row[3] / ref[3]:.2f}, "
              f"filter {row[5] / ref[5]:.2f}, page {row[6] / ref[6]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
