"""Stage 1, scan: every source's rows into the build's ``scan`` table (first occurrence of a key wins).

A source yields Arrow batches (see :mod:`indexer.build.sources`); they are cast and appended in
DuckDB, never looped over in Python. The Darwin Core values are then normalised, originals kept
(:func:`indexer.dwc.normalise_query`; what changed is in the report's ``normalised``), and
``meta_hash`` digests the metadata columns, so the diff can tell an edited label from an unchanged
row without comparing columns one by one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from indexer.build.context import BuildRun
from indexer.build.sources.base import Source
from indexer.dwc import normalise_query
from indexer.store.schema import METADATA_COLUMNS, quote_ident

__all__ = ["scan_sources", "SCAN_META", "meta_hash_sql"]

log = logging.getLogger(__name__)

#: The metadata columns a scan keeps (as text; the writer casts them to the schema's types).
SCAN_META = list(METADATA_COLUMNS)


def scan_sources(run: BuildRun, sources: Sequence[Source]) -> None:
    """Load every source's rows into the table ``scan`` (first occurrence of a key wins)."""
    con, report = run.con, run.report
    meta_cols = ", ".join(f"{quote_ident(c)} VARCHAR" for c in SCAN_META)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE scan_raw (seq BIGINT, source VARCHAR, key VARCHAR, location VARCHAR, "
        f"size BIGINT, mtime DOUBLE, error_reason VARCHAR, error_detail VARCHAR, alt_locations VARCHAR, {meta_cols})"
    )
    seq = 0
    for source in sources:
        n_source = 0
        for batch in source.scan():
            if batch.num_rows == 0:
                continue
            tbl = pa.Table.from_batches([batch])
            tbl = tbl.append_column("seq", pa.array(np.arange(seq, seq + tbl.num_rows, dtype=np.int64)))
            tbl = tbl.append_column("source", pa.array([source.name] * tbl.num_rows, pa.string()))
            seq += tbl.num_rows
            n_source += tbl.num_rows
            con.register("_batch", tbl)
            cols = [c for c in tbl.column_names if c in _scan_columns()]
            sel = ", ".join(f"CAST({quote_ident(c)} AS {_scan_type(c)}) AS {quote_ident(c)}" for c in cols)
            con.execute(f"INSERT INTO scan_raw BY NAME SELECT {sel} FROM _batch")
            con.unregister("_batch")
        source_report = dict(getattr(source, "report", {}) or {}, rows=n_source)
        # images a source already read from an alternative location (--media-root): one count
        report.alternative_locations += source_report.pop("alternative_locations", 0)
        report.source_reports[source.name] = source_report
    con.execute(
        "CREATE OR REPLACE TEMP TABLE scan_unique AS SELECT * EXCLUDE (_dup) FROM ("
        "SELECT *, row_number() OVER (PARTITION BY key ORDER BY seq) AS _dup FROM scan_raw) WHERE _dup = 1"
    )
    con.execute("DROP TABLE scan_raw")
    normalised = normalise_query(con, "scan_unique")
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE scan AS SELECT *, {meta_hash_sql()} AS meta_hash FROM ({normalised.sql})"
    )
    normalised.drop(con)
    con.execute("DROP TABLE scan_unique")
    report.normalised = normalised.report
    report.scanned = con.execute("SELECT count(*) FROM scan").fetchall()[0][0]
    report.duplicates = seq - report.scanned
    if report.duplicates:
        log.warning("%d rows repeat a key seen earlier in the sources; the first one is used", report.duplicates)


def meta_hash_sql() -> str:
    """The SQL digest of a row's metadata columns (all of SCAN_META, as text): equal digests, equal
    metadata. Importers compute it the same way, so a build and an import agree on what changed."""
    return (
        "md5(concat_ws(chr(31), "
        + ", ".join(f"coalesce(CAST({quote_ident(c)} AS VARCHAR), chr(0))" for c in SCAN_META)
        + "))"
    )


def _scan_columns() -> set[str]:
    return {
        "source",
        "seq",
        "key",
        "location",
        "size",
        "mtime",
        "error_reason",
        "error_detail",
        "alt_locations",
        *SCAN_META,
    }


def _scan_type(col: str) -> str:
    return {"seq": "BIGINT", "size": "BIGINT", "mtime": "DOUBLE"}.get(col, "VARCHAR")
