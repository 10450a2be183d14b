"""Metadata columns of an embeddings file -> the collection's columns, by the labels-CSV rule.

The rule is the one every source uses (:func:`indexer.store.schema.canonical_column`): a column
whose name is a Darwin Core term (or one of its listed spellings: ``common_name``, ``lat``, ...)
becomes that column, the first one winning; every other column goes, with its Parquet type kept,
into the ``extra`` JSON object (:func:`indexer.build.sources._common.json_object_sql`). One
addition for embedding releases: ``species``, the seventh rank as TreeOfLife and pybioclip name it,
fills ``specificEpithet`` when no column does, a binomial (``Panthera leo``) losing its genus; and
``identifier``, the image URL in TreeOfLife and emb-explorer files, fills ``mediaURL``.
Locations (paths and URLs) are resolved here too: http(s) URLs as they are, paths against the
file's folder, local files stat'ed so that a later build of the same folder knows them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from indexer.build.scan import SCAN_META, meta_hash_sql
from indexer.build.sources._common import HTTP_URL_RE, json_object_sql, resolve_local
from indexer.locations import path_to_text, text_to_path
from indexer.store.schema import canonical_column, quote_ident

__all__ = ["MetadataMapper", "resolve_locations"]


def _text(col: str) -> str:
    return f"nullif(trim(CAST({quote_ident(col)} AS VARCHAR)), '')"


class MetadataMapper:
    """SQL that maps one file's metadata columns (``columns``) onto SCAN_META plus ``meta_hash``."""

    def __init__(self, columns: Sequence[str]):
        self.columns = tuple(columns)
        taken: dict[str, str] = {}
        extras: list[tuple[str, str]] = []
        species: str | None = None
        for col in self.columns:
            canon = canonical_column(col)
            if canon is None and col.strip().lower() == "identifier":
                canon = "mediaURL"
            if canon is not None and canon not in taken:
                taken[canon] = _text(col)
            elif canon is None and col.strip().lower() == "species" and species is None:
                species = col
            else:
                extras.append(
                    (col.strip(), f"CASE WHEN CAST({quote_ident(col)} AS VARCHAR) <> '' THEN {quote_ident(col)} END")
                )
        params: dict[str, Any] = {}
        if species is not None and "specificEpithet" not in taken:
            s = _text(species)
            genus = taken.get("genus", "NULL")
            first = f"split_part({s}, ' ', 1)"
            rest = f"nullif(trim(substr({s}, strpos({s}, ' ') + 1)), '')"
            binomial = f"(strpos({s}, ' ') > 0 AND ({genus} IS NULL OR lower({first}) = lower({genus})))"
            taken["specificEpithet"] = f"CASE WHEN {binomial} THEN {rest} ELSE {s} END"
            if "genus" not in taken:
                taken["genus"] = f"CASE WHEN strpos({s}, ' ') > 0 THEN {first} END"
        elif species is not None:
            extras.append((species.strip(), _text(species)))
        selects = []
        for c in SCAN_META:
            if c == "extra":
                expr = json_object_sql(extras, params, "k") if extras else "CAST(NULL AS VARCHAR)"
            else:
                expr = taken.get(c, "CAST(NULL AS VARCHAR)")
            selects.append(f"{expr} AS {quote_ident(c)}")
        inner = f"SELECT _pos, {', '.join(selects)} FROM _meta"
        self.sql = f"SELECT *, {meta_hash_sql()} AS meta_hash FROM ({inner}) ORDER BY _pos"
        self.params = params

    def apply(self, con: Any, metadata: pa.Table, n: int) -> pa.Table:
        """The mapped columns (SCAN_META + ``meta_hash``) of ``metadata``'s ``n`` rows, in order."""
        table = metadata.append_column("_pos", pa.array(range(n), pa.int64())) if metadata.num_columns else None
        if table is None:
            table = pa.table({"_pos": pa.array(range(n), pa.int64())})
        con.register("_meta", table)
        try:
            out = con.sql(self.sql, params=self.params or None).to_arrow_table()
        finally:
            con.unregister("_meta")
        return out.drop(["_pos"])


def resolve_locations(raw: pa.Array, base_dir: str) -> tuple[pa.Array, pa.Array, pa.Array, set[str]]:
    """``(location, size, mtime, folders)`` for raw path / URL values: http(s) URLs as they are;
    ``file://`` URLs and paths (absolute, or relative to ``base_dir``) as absolute local paths, with
    the size and modification time of the file when it exists (so that a build of the same folder
    sees the same file); ``folders`` holds the folders of the local files found."""
    n = len(raw)
    http = pc.fill_null(pc.match_substring_regex(raw, HTTP_URL_RE), False)
    todo = pc.and_(pc.invert(http), pc.is_valid(raw))
    idx = pc.indices_nonzero(todo).to_pylist()
    if not idx:
        return raw, pa.nulls(n, pa.int64()), pa.nulls(n, pa.float64()), set()
    values = raw.to_pylist()
    sizes: list[int | None] = [None] * n
    mtimes: list[float | None] = [None] * n
    folders: set[str] = set()
    for i in idx:
        path, _why = resolve_local(values[i], base_dir)
        if path is None:
            values[i] = None
            continue
        path = path_to_text(path)
        values[i] = path
        try:
            st = os.stat(text_to_path(path))
        except OSError:
            continue
        sizes[i], mtimes[i] = st.st_size, st.st_mtime
        folders.add(os.path.dirname(path))
    return pa.array(values, pa.string()), pa.array(sizes, pa.int64()), pa.array(mtimes, pa.float64()), folders
