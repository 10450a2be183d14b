"""Metadata at scale: what DuckDB needs to keep a 0.1% filter fast over many rows.

    python bench/metadata_scale.py [--rows 2000000] [--quick]

Rows like a natural-history image collection's (Darwin Core: seven taxonomic ranks over ~rows/100
species with Pareto-skewed sizes, institution, basis of record, country, year, and image URLs that
share a few long prefixes), loaded into an in-memory DuckDB table in three layouts:

  plain    every string column VARCHAR in a plain in-memory database, rows in arrival order
           (random with respect to taxonomy): the search engine's layout before this benchmark;
  compact  low-cardinality strings as ENUM types, rows sorted by taxonomy, URL prefixes factored
           out into an ENUM column plus the varying suffix (the Imageomics demo's route from 80 GB to
           13.5 GB of metadata);
  engine   the search engine's layout now (``indexer.search.state.connect_metadata`` and
           ``compact_images``): a compressed in-memory database, rows sorted by taxonomy then id,
           strings left VARCHAR (DuckDB's dictionary and FSST compression factor repeated names
           and URL prefixes without a schema of ENUM types, which new values would break);
  engine+values  the same table, filtered as the engine filters it: case-blind equality on a rank,
           an institution or another listed column (``indexer.search.values``) is first evaluated
           over the column's distinct values, and the rows are compared with the stored spellings
           that match, which DuckDB answers from the row groups that can hold them.

Reported for each: DuckDB's memory for the table, the Parquet file size, the time to fetch the
metadata of a page of 20 hits (the engine's ``id = ANY(?)``), and the time to answer a filter of
~0.1% of the rows (a genus and an institution, as SQL compiled by the engine's ``Filter``: folded,
case-blind comparisons) two ways:

  ours     the filter alone, in SQL, gives the allowed ids (numpy), which the ANN search takes as
           ``allowed_ids`` (the search engine's path; ids are then cached per filter);
  demo     the ANN search first (1,000 candidate ids), then ``WHERE id IN (...) AND <filter>`` on
           the metadata, the pattern the Imageomics demo measured 370x slower than filtering in Python.

All in one process, as ratios; the machine is shared, so absolute times are noisy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import machine, print_table  # noqa: E402

from indexer.dwc import install_fold  # noqa: E402
from indexer.search.filters import Filter  # noqa: E402
from indexer.search.state import compact_images, connect_metadata, metadata_cursor  # noqa: E402
from indexer.search.values import ColumnValues  # noqa: E402

PREFIXES = (
    "https://inaturalist-open-data.s3.amazonaws.com/photos/",
    "https://api.gbif.org/v1/image/cache/occurrence/",
    "https://collections.nmnh.si.edu/media/?irn=",
)


def rows_table(n: int, seed: int = 0):
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    n_species = max(100, n // 100)
    sizes = rng.pareto(1.2, n_species) + 1.0
    species = rng.choice(n_species, size=n, p=sizes / sizes.sum())
    genus = species // 6
    family = genus // 8
    order = family // 10
    cls = order // 8
    phylum = cls // 5

    def names(prefix: str, values: np.ndarray) -> pa.Array:
        vocab = np.array([f"{prefix}{i:06d}" for i in range(int(values.max()) + 1)], dtype=object)
        return pa.array(vocab[values])

    prefix = rng.integers(0, len(PREFIXES), n)
    urls = np.array(PREFIXES, dtype=object)[prefix] + np.char.mod("%d/medium.jpg", rng.integers(1, 10**9, n)).astype(
        object
    )
    return pa.table(
        {
            "id": np.arange(n, dtype=np.int64),
            "kingdom": pa.array(np.where(phylum % 3 == 0, "Plantae", "Animalia").astype(object)),
            "phylum": names("Phylum", phylum),
            "class": names("Class", cls),
            "order": names("Order", order),
            "family": names("Family", family),
            "genus": names("Genus", genus),
            "specificEpithet": names("sp", species),
            "institutionCode": names("INST", rng.integers(0, 40, n)),
            "basisOfRecord": pa.array(np.array(["PreservedSpecimen", "HumanObservation", "MachineObservation"], dtype=object)[rng.integers(0, 3, n)]),
            "countryCode": names("C", rng.integers(0, 150, n)),
            "year": rng.integers(1850, 2025, n).astype(np.int32),
            "url": pa.array(urls),
            "_fold_institutionCode": pa.nulls(n, pa.string()),  # the folded twin: null for ASCII text
        }
    )  # fmt: skip


ENUM_COLUMNS = (
    "kingdom",
    "phylum",
    "class",
    "order",
    "family",
    "genus",
    "institutionCode",
    "basisOfRecord",
    "countryCode",
)
TAXONOMY = ("kingdom", "phylum", "class", "order", "family", "genus", "specificEpithet")


def load(con, table, layout: str) -> None:
    con.register("src", table)
    if layout == "plain":
        con.execute("CREATE TABLE images AS SELECT * FROM src")
    elif layout == "engine":
        con.execute("CREATE TABLE images AS SELECT * FROM src")
        compact_images(con)
    else:
        for col in ENUM_COLUMNS:
            con.execute(f'CREATE TYPE "e_{col}" AS ENUM (SELECT DISTINCT "{col}" FROM src WHERE "{col}" IS NOT NULL)')
        prefixes = ", ".join(f"'{p}'" for p in PREFIXES)
        con.execute(f"CREATE TYPE e_prefix AS ENUM ({prefixes})")
        cols = ", ".join(
            f'"{c}"::"e_{c}" AS "{c}"' if c in ENUM_COLUMNS else f'"{c}"' for c in table.column_names if c != "url"
        )
        case = " ".join(f"WHEN starts_with(url, '{p}') THEN '{p}'" for p in PREFIXES)
        con.execute(
            f"CREATE TABLE images AS SELECT {cols}, (CASE {case} END)::e_prefix AS url_prefix, "
            f"substr(url, length(CASE {case} END) + 1) AS url_rest FROM src ORDER BY "
            + ", ".join(f'"{c}"' for c in TAXONOMY)
        )
    con.unregister("src")
    con.execute("CREATE INDEX images_id ON images (id)")


def timed(fn, repeat: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def measure(layout: str, table, genus: str, rng: np.random.Generator, tmp: Path) -> list:
    import duckdb

    n = table.num_rows
    listed = layout == "engine+values"
    layout = "engine" if listed else layout
    if layout == "engine":
        con = connect_metadata()
    else:
        con = duckdb.connect()
        install_fold(con)
    t0 = time.perf_counter()
    load(con, table, layout)
    load_s = time.perf_counter() - t0
    mem = con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchall()[0][0]
    pq = tmp / f"{layout}.parquet"
    con.execute(f"COPY images TO '{pq}' (FORMAT parquet)")
    flt = Filter.from_mapping({"genus": genus, "institutionCode": [f"INST{i:06d}" for i in range(10)]})
    t0 = time.perf_counter()  # the first filter: compiling it reads the listed columns' values
    where, params, _ = flt.to_sql((), None, ColumnValues(lambda: metadata_cursor(con)) if listed else None)
    select = f"SELECT id FROM images WHERE {where} ORDER BY id"
    allowed = con.execute(select, params).fetchnumpy()["id"]
    first = (time.perf_counter() - t0) * 1e3
    candidates = np.sort(rng.choice(n, size=1000, replace=False))
    candidates[: min(50, allowed.size)] = allowed[:50]
    ours = timed(lambda: con.execute(select, params).fetchnumpy())
    cached = timed(lambda: candidates[np.isin(candidates, allowed)])
    demo_sql = f"SELECT id FROM images WHERE id IN (SELECT unnest(?)) AND {where}"
    demo = timed(lambda: con.execute(demo_sql, [candidates.tolist(), *params]).fetchall())
    page = rng.choice(n, size=20, replace=False).tolist()
    lookup = timed(lambda: con.execute("SELECT * FROM images WHERE id = ANY(?)", [page]).fetchall())
    con.close()
    return ["engine+values" if listed else layout, n, round(load_s, 1), round(mem / 2**20, 1), round(pq.stat().st_size / 2**20, 1), allowed.size,
            round(allowed.size / n * 100, 3), round(first, 1), round(ours, 2), round(cached, 3), round(demo, 2), round(demo / cached, 1), round(lookup, 2)]  # fmt: skip


def main() -> None:
    import duckdb

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 200_000 if args.quick else args.rows
    print(f"machine: {machine()}, duckdb {duckdb.__version__}")
    table = rows_table(n)
    rng = np.random.default_rng(1)
    genus_counts = table.group_by("genus").aggregate([("id", "count")]).to_pydict()
    share = np.array(genus_counts["id_count"]) / n
    genus = genus_counts["genus"][
        int(np.argmin(np.abs(share - 0.004)))
    ]  # ~0.4% of rows, x 10 of 40 institutions: ~0.1%
    with tempfile.TemporaryDirectory() as tmp:
        out = [
            measure(layout, table, genus, rng, Path(tmp)) for layout in ("plain", "compact", "engine", "engine+values")
        ]
    print_table(
        "metadata layouts and a ~0.1% filter (genus + institution), median ms",
        ["layout", "rows", "load s", "DuckDB MiB", "Parquet MiB", "allowed", "%", "first filter ms", "filter->ids ms",
         "ids in Python ms", "demo IN(...) ms", "demo / Python", "page of 20 ms"],
        out,
    )  # fmt: skip
    plain = out[0]
    for row in out[1:]:
        print(f"{row[0]} / plain: memory {row[3] / plain[3]:.2f}, Parquet {row[4] / plain[4]:.2f}, "
              f"filter {row[8] / plain[8]:.2f}, page {row[12] / plain[12]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
