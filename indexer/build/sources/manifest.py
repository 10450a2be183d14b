"""CSV, TSV or Parquet manifests: one row per image, a column with its path or URL, metadata beside it."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from indexer.build.sources._common import (
    BATCH_ROWS,
    HTTP_URL_RE,
    connect,
    duckdb_message,
    fill_locations,
    guard_reader,
    json_object_sql,
    path_to_text,
    rebatch,
    replace_columns,
)
from indexer.errors import SourceError
from indexer.store.schema import canonical_column, quote_ident

__all__ = ["ManifestSource", "PATH_COLUMNS", "detect_path_column", "manifest_columns"]

log = logging.getLogger(__name__)

#: Accepted names of the path/URL column, in order of preference (compared case-insensitively).
PATH_COLUMNS = (
    "path",
    "file",
    "filename",
    "file_name",
    "filepath",
    "file_path",
    "relpath",
    "relative_path",
    "image",
    "image_path",
    "img_path",
    "image_file",
    "url",
    "image_url",
    "img_url",
    "media_url",
    "mediaurl",
    "uri",
    "accessuri",
    "identifier",
    "location",
)

#: Metadata columns that never come from a manifest's own column of that name.
_RESERVED = {"recordID"}


def _is_parquet(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PAR1"
    except OSError:
        return False


def manifest_columns(path: str) -> list[str]:
    """Column names of a CSV/TSV/Parquet file (SourceError when it cannot be read as one)."""
    import duckdb

    con = connect()
    try:
        rel = _relation_sql(path)
        try:
            rows = con.execute(f"DESCRIBE SELECT * FROM {rel}", {"file": path}).fetchall()
        except duckdb.Error as exc:
            err = _error(path, exc)
            if not isinstance(err, _NotUtf8):
                raise err from exc
            # Not UTF-8: the columns from the first lines read as Windows-1252 (the whole file is
            # transcoded when the source reads it).
            import tempfile

            with open(path, "rb") as fh:
                head = fh.read(1 << 20)
            head = head[: head.rfind(b"\n") + 1] or head
            suffix = ".tsv" if path.lower().endswith((".tsv", ".tab")) else ".csv"
            with tempfile.NamedTemporaryFile("w", suffix=suffix, encoding="utf-8", delete=False) as tmp:
                tmp.write(head.decode("cp1252", errors="replace"))
            try:
                rows = con.execute(f"DESCRIBE SELECT * FROM {rel}", {"file": tmp.name}).fetchall()
            except duckdb.Error:
                raise err from exc
            finally:
                os.unlink(tmp.name)
        return [r[0] for r in rows]
    finally:
        con.close()


class _NotUtf8(SourceError):
    """The manifest is not UTF-8 text (read again as Windows-1252)."""


def _error(path: str, exc: BaseException) -> SourceError:
    cls = _NotUtf8 if "nvalid unicode" in str(exc) else SourceError
    return cls(f"cannot read manifest {path}: {duckdb_message(exc)}", path)


def detect_path_column(columns: list[str]) -> str | None:
    """The column holding image paths/URLs among ``columns`` (first of PATH_COLUMNS), or None."""
    lowered = {c.strip().lstrip("\ufeff").lower(): c for c in columns}
    return next((lowered[c] for c in PATH_COLUMNS if c in lowered), None)


def _relation_sql(path: str) -> str:
    if _is_parquet(path):
        return "read_parquet($file)"
    return "read_csv($file, header=true, all_varchar=true, max_line_size=33554432)"


class ManifestSource:
    """Images listed in a CSV, TSV or Parquet file.

    The path column is ``path_column`` or the first of :data:`PATH_COLUMNS` present. Its values
    are http(s) URLs, ``file://`` URLs, or paths (absolute, or relative to the manifest's folder,
    with either slash). ``key`` and ``location`` are the URL or the absolute path; local files get
    ``size`` and ``mtime``; a missing file or an unusable value is an error row (``not-found``,
    ``invalid-url``, ``no-media-url`` for an empty cell). Columns that are Darwin Core terms map
    onto the metadata columns; every other column goes into ``extra`` (JSON, with the Parquet
    types kept). ``mediaURL`` is the URL when the value is one (or the manifest's own column).
    The same path twice is a SourceError, raised on construction like any unreadable manifest.
    """

    def __init__(self, path: str | os.PathLike, *, path_column: str | None = None, name: str | None = None):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise SourceError(f"manifest not found: {path}", path)
        self.path = os.path.abspath(path)
        self.name = name or path_to_text(self.path)
        self.report: dict[str, Any] = {}
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._read_path = self.path
        try:
            self._read(path_column)
        except _NotUtf8:
            self._read_path = self._transcoded()
            self._read(path_column)

    def _read(self, path_column: str | None) -> None:
        """Read the header, settle the path column and check for duplicates (a full pass)."""
        self.columns = manifest_columns(self._read_path)
        if path_column is not None:
            found = [c for c in self.columns if c == path_column] or [
                c for c in self.columns if c.strip().lower() == path_column.strip().lower()
            ]
            if not found:
                raise SourceError(
                    f"manifest {self.path} has no column {path_column!r} (columns: {', '.join(self.columns)})",
                    self.path,
                )
            self.path_column = found[0]
        else:
            detected = detect_path_column(self.columns)
            if detected is None:
                raise SourceError(
                    f"manifest {self.path} has no path or URL column: expected one of {', '.join(PATH_COLUMNS)} "
                    f"or --path-column NAME; found {', '.join(self.columns)}",
                    self.path,
                )
            self.path_column = detected
        self._check_duplicates()

    def __repr__(self) -> str:
        return f"ManifestSource({self.path!r}, path_column={self.path_column!r})"

    def _transcoded(self) -> str:
        from indexer.build.sources._archive import _transcode

        log.warning("%s is not valid UTF-8; reading it as Windows-1252", self.path)
        self._tmp = tempfile.TemporaryDirectory(prefix="bioclip-manifest-")
        target = os.path.join(self._tmp.name, os.path.basename(self.path))
        with open(self.path, "rb") as src, open(target, "wb") as dst:
            _transcode(src, dst, "cp1252")
        return target

    def _norm_sql(self) -> str:
        p = quote_ident(self.path_column)
        return f"regexp_replace(replace(trim(CAST({p} AS VARCHAR)), '\\', '/'), '^(\\./)+', '')"

    def _check_duplicates(self) -> None:
        import duckdb

        con = connect()
        try:
            rel = _relation_sql(self._read_path)
            dup = con.execute(
                f"SELECT v, n FROM (SELECT {self._norm_sql()} AS v, count(*) AS n FROM {rel} GROUP BY 1) "
                "WHERE v IS NOT NULL AND v <> '' AND n > 1 ORDER BY n DESC, v LIMIT 3",
                {"file": self._read_path},
            ).fetchall()
        except duckdb.Error as exc:
            raise _error(self.path, exc) from exc
        finally:
            con.close()
        if dup:
            listed = "; ".join(f"{v!r} ({n} times)" for v, n in dup)
            raise SourceError(f"manifest {self.path} lists the same image more than once: {listed}", self.path)

    def _query(self) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {"file": self._read_path}
        selects = [f"nullif(trim(CAST({quote_ident(self.path_column)} AS VARCHAR)), '') AS location"]
        taken: set[str] = set()
        extras: list[tuple[str, str]] = []
        for col in self.columns:
            if col == self.path_column:
                continue
            canon = canonical_column(col)
            if canon is not None and canon not in taken and canon not in _RESERVED:
                taken.add(canon)
                selects.append(f"nullif(trim(CAST({quote_ident(col)} AS VARCHAR)), '') AS {quote_ident(canon)}")
            else:
                key = col.strip().lstrip("\ufeff")
                # CSV cells are text; empty ones are left out. Parquet values keep their JSON type.
                extras.append((key, f"CASE WHEN CAST({quote_ident(col)} AS VARCHAR) <> '' THEN {quote_ident(col)} END"))
        if "mediaURL" not in taken:
            # The published URL of the image, when the path column holds one.
            selects.append(
                f"CASE WHEN regexp_matches(trim(CAST({quote_ident(self.path_column)} AS VARCHAR)), $http) "
                f"THEN trim(CAST({quote_ident(self.path_column)} AS VARCHAR)) END AS mediaURL"
            )
            params["http"] = HTTP_URL_RE
            taken.add("mediaURL")
        selects.append(f"{json_object_sql(extras, params, 'k')} AS extra")
        return f"SELECT {', '.join(selects)} FROM {_relation_sql(self._read_path)}", params

    def scan(self) -> Iterator[pa.RecordBatch]:
        import duckdb

        report = {"rows": 0, "image_rows": 0, "error_rows": 0}
        self.report = report
        base = os.path.dirname(self.path)
        query, params = self._query()
        con = connect()
        try:
            try:
                reader = con.sql(query, params=params).to_arrow_reader(BATCH_ROWS)
            except duckdb.Error as exc:
                raise SourceError(f"cannot read manifest {self.path}: {duckdb_message(exc)}", self.path) from exc
            first_row = 1
            for batch in rebatch(guard_reader(reader, f"cannot read manifest {self.path}", self.path)):
                # DuckDB keeps the file's order, so data rows are numbered here instead of by a
                # (serial) window in the query.
                yield self._finish(batch, first_row, base, report)
                first_row += batch.num_rows
        finally:
            con.close()
        log.info(
            "%s: %d rows, %d images, %d unusable", self.name, report["rows"], report["image_rows"], report["error_rows"]
        )

    def _finish(self, batch: pa.RecordBatch, first_row: int, base: str, report: dict[str, int]) -> pa.RecordBatch:
        n = batch.num_rows
        loc = batch.column("location")
        empty = pc.is_null(loc)
        rows = pc.cast(pa.array(range(first_row, first_row + n), pa.int64()), pa.string())
        reason = pc.if_else(empty, pa.scalar("no-media-url"), pa.scalar(None, pa.string()))
        detail = pc.if_else(
            empty,
            pc.binary_join_element_wise(
                pa.scalar(f"{self.name}, data row "), rows, pa.scalar(f": empty {self.path_column!r}"), ""
            ),
            pa.scalar(None, pa.string()),
        )
        batch = replace_columns(
            batch,
            size=pa.nulls(n, pa.int64()),
            mtime=pa.nulls(n, pa.float64()),
            error_reason=reason,
            error_detail=detail,
        )
        batch = fill_locations(batch, base, bare_missing_reason="not-found")
        loc = batch.column("location")
        fallback_key = pc.binary_join_element_wise(pa.scalar(f"{self.name}#row"), rows, "")
        key = pc.if_else(pc.is_null(loc), fallback_key, loc)
        batch = replace_columns(batch, key=key)
        # key first, as in every other source
        order = ["key", "location", "size", "mtime", "error_reason", "error_detail"]
        batch = batch.select(order + [c for c in batch.schema.names if c not in order])
        errors = n - batch.column("error_reason").null_count
        report["rows"] += n
        report["error_rows"] += errors
        report["image_rows"] += n - errors
        return batch
