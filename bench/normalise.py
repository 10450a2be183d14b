"""Benchmark: the cost of normalising Darwin Core values at ingest, and what the folded columns buy.

1. Ingest: N scanned rows shaped like a GBIF download's (basisOfRecord in GBIF's enumerations and
   free text, licence codes and URLs, countries as codes and names in several spellings, names with
   authorship, accented collectors; a few thousand distinct values of each, as in real exports) are
   staged the way ``indexer/build/scan.py`` does. Baseline: staging with the metadata hash only (what
   scan did before); against it: :func:`indexer.dwc.normalise_query` then the hash. Both in this
   process, on the same table.
2. Filters over the normalised rows (DuckDB, in memory, one thread per query as the engine runs them):
   ``recordedBy~tomas`` on the stored folded twin (``coalesce(_fold_recordedBy, lower(recordedBy))``,
   what the engine runs) against the case-only filter it replaced (``contains(lower(...), lower(?))``,
   the baseline) and against folding every row at query time (``bioclip_fold(recordedBy)``).

    python bench/normalise.py              # 1M rows
    python bench/normalise.py --rows 200000
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb  # noqa: E402

from indexer.dwc import install_fold, normalise_query  # noqa: E402
from indexer.store.schema import METADATA_COLUMNS, quote_ident  # noqa: E402

BASIS = ["PRESERVED_SPECIMEN", "PreservedSpecimen", "Specimen", "S", "HUMAN_OBSERVATION", "Observation", "UNKNOWN"]
LICENSES = [
    "CC_BY_4_0",
    "CC_BY_NC_4_0",
    "CC0_1_0",
    "http://creativecommons.org/licenses/by/4.0/",
    "https://creativecommons.org/licenses/by-nc/4.0/legalcode",
    "CC BY-NC-SA 4.0",
    "All rights reserved",
]
COUNTRIES = ["USA", "United States", "U.S.A.", "Kenya", "KE", "Deutschland", "UK", "golfe du bengale", "N/A"]
CODES = ["US", "KE", "DE", "GB", "IN", None]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    return "AMX/AVX-512 BF16" if ("amx_bf16" in flags or "avx512_bf16" in flags) else "no bf16 units"


def stage(con, rows: int) -> None:
    """``scan_raw``-shaped rows (every metadata column as text), generated in DuckDB."""
    cols = dict.fromkeys(METADATA_COLUMNS, "CAST(NULL AS VARCHAR)")
    cols.update(
        basisOfRecord=f"list_extract({BASIS}, 1 + (i % {len(BASIS)}))",
        license=f"list_extract({LICENSES}, 1 + (i % {len(LICENSES)}))",
        country=f"CASE WHEN i % 3 = 0 THEN list_extract({COUNTRIES}, 1 + (i % {len(COUNTRIES)})) END",
        countryCode=f"list_extract({list(CODES)}, 1 + (i % {len(CODES)}))".replace("None", "NULL"),
        scientificName="'Genus' || (i % 2000) || ' species' || (i % 7) || ' (Author, ' || (1800 + (i % 2000) % 200) || ')'",
        taxonRank="CASE WHEN i % 2 = 0 THEN 'SPECIES' ELSE 'species' END",
        genus="'Genus' || (i % 2000)",
        recordedBy="CASE WHEN i % 20 = 0 THEN 'Tomás Gómez ' || (i % 500) ELSE 'John Smith ' || (i % 5000) END",
        locality="'Locality ' || (i % 10000)",
    )
    select = ", ".join(f"{expr} AS {quote_ident(c)}" for c, expr in cols.items())
    con.execute(f"CREATE OR REPLACE TABLE scan_unique AS SELECT 'k' || i AS key, {select} FROM range({rows}) t(i)")


def hash_sql(relation: str) -> str:
    h = ", ".join(f"coalesce(CAST({quote_ident(c)} AS VARCHAR), chr(0))" for c in METADATA_COLUMNS)
    return f"SELECT *, md5(concat_ws(chr(31), {h})) AS meta_hash FROM {relation}"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {cpu_model()} ({bf16()}), {os.cpu_count()} cores, python {platform.python_version()}, "
          f"duckdb {duckdb.__version__}")  # fmt: skip
    con = duckdb.connect()
    install_fold(con)
    stage(con, args.rows)
    base, norm = [], []
    report = {}
    for _ in range(args.repeat):
        base.append(timed(lambda: con.execute(f"CREATE OR REPLACE TABLE scan AS {hash_sql('scan_unique')}")))

        def normalised():
            n = normalise_query(con, "scan_unique")
            con.execute(f"CREATE OR REPLACE TABLE scan AS {hash_sql('(' + n.sql + ')')}")
            n.drop(con)
            report.update(n.report)

        norm.append(timed(normalised))
    b, m = statistics.median(base), statistics.median(norm)
    print(f"\ningest of {args.rows:,} scanned rows (median of {args.repeat}):")
    print(f"  baseline (stage + hash)           {b:6.2f} s   {args.rows / b:>12,.0f} rows/s")
    print(f"  normalised (+ normalise_query)    {m:6.2f} s   {args.rows / m:>12,.0f} rows/s")
    print(f"  ratio normalised / baseline       {m / b:6.2f}x   (+{(m - b) * 1e6 / args.rows:.2f} us per row)")
    print(f"  values changed: basisOfRecord {report['basisOfRecord']['changed']:,}, license "
          f"{report['license']['changed']:,}, country {report['country']['changed']:,}, names "
          f"{report['names']['changed']:,} rows")  # fmt: skip

    con.execute("SET threads = 1")
    queries = {
        "case only (baseline): contains(lower(c), lower(?))": 'contains(lower("recordedBy"), lower(?))',
        "stored folded twin (the engine)": 'contains(coalesce("_fold_recordedBy", lower("recordedBy")), bioclip_fold(?))',
        "fold every row per query": 'contains(bioclip_fold("recordedBy"), bioclip_fold(?))',
    }
    times = {}
    for label, cond in queries.items():
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            n = con.execute(f"SELECT count(*) FROM scan WHERE {cond}", ["tomas"]).fetchall()[0][0]
            runs.append(time.perf_counter() - t0)
        times[label] = (statistics.median(runs), n)
    base_q = times[next(iter(queries))][0]
    print(f"\nfilter recordedBy~tomas over {args.rows:,} rows, 1 thread (median of 5):")
    for label, (t, n) in times.items():
        print(f"  {label:<52} {t * 1000:8.1f} ms  {t / base_q:5.2f}x  ({n:,} rows match)")


if __name__ == "__main__":
    main()
