"""Embeddings out: a collection's vectors and key metadata as Parquet, or as clip-retrieval writes them.

``parquet`` (``DIR/embeddings-NNNNN.parquet``): ``uuid`` (the image's key in the collection, a unique
string), ``emb`` (``list<float32>``, the stored unit vector), the seven ranks as TreeOfLife names them
(``kingdom`` ... ``genus``, ``species`` as a binomial), the Darwin Core columns the selection has,
``identifier`` (the image's published URL, where emb-explorer looks for one), ``location`` and the keys
of ``extra`` as their own columns. Readable by DuckDB (``read_parquet('DIR/*.parquet')``), pandas,
pyarrow and the Imageomics emb-explorer, and by ``bioclip-index import`` (the round trip keeps ids,
vectors and metadata).

``npy`` (clip-retrieval's ``inference`` layout): ``DIR/img_emb/img_emb_N.npy`` (float16 (n, d), unit
rows) and ``DIR/metadata/metadata_N.parquet`` (``image_path`` and the same columns), row-aligned,
``N`` zero-padded as clip-retrieval pads it.

Rows are written in id order, a chunk at a time (memory: one chunk of vectors and metadata), each
file atomically; ``filters`` select the images as ``--where`` does in a search.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from indexer.errors import QueryError
from indexer.store.files import atomic_file
from indexer.store.schema import DWC_COLUMNS, RANK_COLUMNS, quote_ident

if TYPE_CHECKING:  # pragma: no cover
    from indexer.search.state import ServedState

__all__ = ["ExportReport", "export_state", "EXPORT_FORMATS"]

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("parquet", "npy")
_CHUNK = 65_536
_SKIP = {"specificEpithet", "mediaURL", "recordID"} | set(RANK_COLUMNS)


@dataclass
class ExportReport:
    """What an export wrote: ``rows``, the ``files`` (relative to ``out``), the ``columns``."""

    out: str
    format: str
    rows: int = 0
    dimension: int = 0
    files: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)


def _present_columns(cur: Any, ids_sql: str) -> list[str]:
    """The Darwin Core columns (beyond ranks and media) that at least one selected image has."""
    cols = [c for c in DWC_COLUMNS if c not in _SKIP]
    counts = ", ".join(f"count({quote_ident(c)})" for c in cols)
    row = cur.execute(f"SELECT {counts} FROM images WHERE id IN ({ids_sql})").fetchall()[0]
    return [c for c, n in zip(cols, row) if n]


def _select_sql(columns: list[str], extra_keys: list[str], taken: set[str]) -> str:
    ranks = [f"{quote_ident(c)}" for c in RANK_COLUMNS[:-1]]
    species = (
        'CASE WHEN "specificEpithet" IS NULL THEN NULL WHEN genus IS NULL THEN "specificEpithet" '
        "ELSE genus || ' ' || \"specificEpithet\" END AS species"
    )
    url = "coalesce(\"mediaURL\", CASE WHEN regexp_matches(location, '^https?://') THEN location END) AS identifier"
    extras = [f"json_extract_string(extra, {_json_path(k)}) AS {quote_ident(k)}" for k in extra_keys if k not in taken]
    parts = ["key AS uuid", *ranks, species, *[quote_ident(c) for c in columns], url, "location", *extras]
    return ", ".join(parts)


def _json_path(key: str) -> str:
    return "'$.\"" + key.replace("'", "''").replace('"', '\\"') + "\"'"


def _chunks(state: ServedState, cur: Any, ids: np.ndarray, select: str) -> Iterator[tuple[pa.Table, np.ndarray]]:
    for start in range(0, ids.size, _CHUNK):
        part = ids[start : start + _CHUNK]
        cur.register("_export_ids", pa.table({"id": part}))
        try:
            table = cur.sql(
                f"SELECT {select} FROM images WHERE id IN (SELECT id FROM _export_ids) ORDER BY id"
            ).to_arrow_table()
        finally:
            cur.unregister("_export_ids")
        yield table, state.vectors(part)


def export_state(
    state: ServedState, ids: np.ndarray, out: str | os.PathLike, *, fmt: str = "parquet", shard_rows: int = 500_000
) -> ExportReport:
    """Write the images ``ids`` (sorted, live) of ``state`` to the folder ``out`` in ``fmt``.

    Raises QueryError when there is nothing to export, ``fmt`` is unknown, or ``out`` holds files.
    """
    if fmt not in EXPORT_FORMATS:
        raise QueryError(f"unknown export format {fmt!r}; formats: {', '.join(EXPORT_FORMATS)}")
    if ids.size == 0:
        raise QueryError("no images to export (the filters select none)")
    out = os.fspath(out)
    if os.path.isdir(out) and any(not n.startswith(".") for n in os.listdir(out)):
        raise QueryError(f"{out} exists and is not empty; export into a new folder")
    d = state.snapshot.dimension
    report = ExportReport(out=os.path.abspath(out), format=fmt, dimension=d)
    cur = state.cursor()
    cur.register("_export_all", pa.table({"id": ids}))
    taken = set(DWC_COLUMNS) | {"uuid", "species", "identifier", "location", "emb", "image_path"}
    columns = _present_columns(cur, "SELECT id FROM _export_all")
    cur.unregister("_export_all")
    select = _select_sql(columns, sorted(state.generation.extra_keys), taken)
    shards = max(1, math.ceil(ids.size / shard_rows))
    digits = int(math.log10(shards)) + 1
    chunks = _chunks(state, cur, ids, select)
    pending: tuple[pa.Table, np.ndarray] | None = None
    for shard in range(shards):
        want = min(shard_rows, ids.size - shard * shard_rows)
        tables, vectors, have = [], [], 0
        while have < want:
            table, vecs = pending if pending is not None else next(chunks)
            pending = None
            if have + table.num_rows > want:
                cut = want - have
                pending = (table.slice(cut), vecs[cut:])
                table, vecs = table.slice(0, cut), vecs[:cut]
            tables.append(table)
            vectors.append(vecs)
            have += table.num_rows
        table = pa.concat_tables(tables)
        vecs = np.concatenate(vectors)
        _write_shard(out, fmt, table, vecs, report, shard=shard, digits=digits)
        report.rows += table.num_rows
    report.columns = (["uuid", "emb"] if fmt == "parquet" else ["image_path"]) + [
        c for c in table.column_names if c != "uuid" or fmt == "npy"
    ]
    log.info("exported %d images to %s (%s)", report.rows, out, fmt)
    return report


def _write_shard(
    out: str, fmt: str, table: pa.Table, vecs: np.ndarray, report: ExportReport, *, shard: int, digits: int
) -> None:
    import pyarrow.parquet as pq

    d = vecs.shape[1]
    if fmt == "parquet":
        emb = pa.FixedSizeListArray.from_arrays(pa.array(vecs.astype(np.float32).reshape(-1)), d)
        table = table.add_column(1, "emb", emb.cast(pa.list_(pa.float32())))
        rel = f"embeddings-{shard:05d}.parquet"
        os.makedirs(out, exist_ok=True)
        with atomic_file(os.path.join(out, rel)) as f:
            pq.write_table(table, f, compression="zstd", row_group_size=65_536)
        report.files.append(rel)
        return
    for sub in ("img_emb", "metadata"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    n = f"{shard:0{digits}d}"
    with atomic_file(os.path.join(out, "img_emb", f"img_emb_{n}.npy")) as f:
        np.save(f, np.ascontiguousarray(vecs, dtype=np.float16), allow_pickle=False)
    meta = table.add_column(0, "image_path", table.column("location"))
    with atomic_file(os.path.join(out, "metadata", f"metadata_{n}.parquet")) as f:
        pq.write_table(meta, f, compression="zstd", row_group_size=65_536)
    report.files += [f"img_emb/img_emb_{n}.npy", f"metadata/metadata_{n}.parquet"]
