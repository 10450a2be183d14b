"""A folder tree of images, optionally with a labels CSV joined on the relative path."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pyarrow as pa

from indexer.build.sources.labels import LabelsTable, read_table
from indexer.errors import SourceError
from indexer.store.schema import canonical_column, quote_ident

__all__ = ["FolderSource", "read_labels", "read_labels_file"]

log = logging.getLogger(__name__)

#: Accepted names of the labels column holding the path relative to the folder (first match wins).
PATH_COLUMNS = ("path", "file", "filename", "file_name", "relpath", "relative_path")

_BATCH = 50_000


def read_labels(labels: str | os.PathLike) -> pa.Table:
    """Read a labels CSV into a table with ``relpath``, canonical Darwin Core columns and ``extra``.

    The path column is ``path`` (or ``file`` / ``filename``), relative to the folder, with either
    slash. Columns that are Darwin Core terms map onto the collection's columns; every other
    column is kept in ``extra`` (a JSON object). Encodings, line endings, separators and ragged
    rows are handled as :mod:`indexer.build.sources.labels` says. Raises SourceError naming the
    file, and the row where one is at fault.
    """
    return read_labels_file(labels).table


def read_labels_file(labels: str | os.PathLike) -> LabelsTable:
    """:func:`read_labels`, with the encoding it was read as and the warnings for the summary."""
    import duckdb

    path = os.fspath(labels)
    if not os.path.isfile(path):
        raise SourceError(f"labels file not found: {path}", path)
    read = read_table(path)
    con = duckdb.connect()
    try:
        rel = read.table
        columns = [c for c in rel.column_names if c != "_line"]
        lowered = {c.strip().lstrip("\ufeff").lower(): c for c in columns}
        path_col = next((lowered[c] for c in PATH_COLUMNS if c in lowered), None)
        if path_col is None:
            raise SourceError(
                f"labels file {path} has no path column: expected one of {', '.join(PATH_COLUMNS)}; "
                f"found {', '.join(columns)}",
                path,
            )
        selects = [f"replace(regexp_replace(trim({quote_ident(path_col)}), '^(\\./)+', ''), '\\', '/') AS relpath"]
        extras: list[str] = []
        taken: set[str] = set()
        for col in columns:
            if col == path_col:
                continue
            canon = canonical_column(col)
            if canon is not None and canon not in taken and canon != "extra":
                taken.add(canon)
                selects.append(f"nullif(trim({quote_ident(col)}), '') AS {quote_ident(canon)}")
            else:
                extras.append(col)
        if extras:
            pairs = ", ".join(f"'{c.replace(chr(39), chr(39) * 2)}', {quote_ident(c)}" for c in extras)
            selects.append(f"CAST(json_object({pairs}) AS VARCHAR) AS extra")
        con.register("labels_rel", rel)
        table = con.sql(f"SELECT _line, {', '.join(selects)} FROM labels_rel").to_arrow_table()
        con.register("table_", table)
        dup = con.execute(
            "SELECT relpath, list(_line ORDER BY _line) FROM table_ WHERE relpath IS NOT NULL "
            "GROUP BY relpath HAVING count(*) > 1 ORDER BY min(_line) LIMIT 3"
        ).fetchall()
        if dup:
            where = "; ".join(f"{r!r} on lines {', '.join(map(str, lines))}" for r, lines in dup)
            raise SourceError(f"labels file {path} lists the same path more than once: {where}", path)
        missing = con.execute("SELECT min(_line) FROM table_ WHERE relpath IS NULL OR relpath = ''").fetchall()[0][0]
        if missing is not None:
            raise SourceError(f"labels file {path}, line {missing}: empty {path_col!r}", path)
        read.table = table.drop(["_line"])
        return read
    finally:
        con.close()


class FolderSource:
    """Every image file under ``root`` (recursively), with metadata from an optional labels CSV.

    ``key`` and ``location`` are the absolute path (in the lossless text form of
    ``indexer.media.localfs.path_to_text``). Files the walk cannot use (broken symlinks, loops,
    unreadable directories) come out as rows with ``error_reason``. Symbolic links that lead outside
    ``root`` are not followed unless ``follow_symlinks``; they are counted in ``report``
    (``links_not_followed``, with a warning naming the first few). With ``follow_symlinks``,
    ``linked_roots`` lists the real paths they lead to (where the app may then show images from).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        labels: str | os.PathLike | None = None,
        name: str | None = None,
        follow_symlinks: bool = False,
    ):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise SourceError(f"not a folder: {root}", root)
        self.root = os.path.abspath(root)
        self.labels = os.fspath(labels) if labels is not None else None
        self.name = name or self.root
        self.follow_symlinks = follow_symlinks
        self.linked_roots: list[str] = []
        self.report: dict = {}
        # Read eagerly: a bad labels file must fail before any encoding starts.
        read = read_labels_file(self.labels) if self.labels else None
        self._labels_table = read.table if read is not None else None
        self._labels_warnings = list(read.warnings) if read is not None else []

    def __repr__(self) -> str:
        return f"FolderSource({self.root!r}, labels={self.labels!r})"

    def scan(self) -> Iterator[pa.RecordBatch]:
        from indexer.media.localfs import FileProblem, SkippedLink, walk_images

        rows: dict[str, list] = {
            k: [] for k in ("relpath", "key", "location", "size", "mtime", "error_reason", "error_detail")
        }
        seen_relpaths: set[str] = set()
        skipped: list[SkippedLink] = []
        self.linked_roots = []
        for entry in walk_images(self.root, follow_symlinks=self.follow_symlinks, followed=self.linked_roots):
            if isinstance(entry, SkippedLink):
                skipped.append(entry)
                log.info("not following %s: a symbolic link to %s, outside %s", entry.path, entry.target, self.root)
                continue
            rows["relpath"].append(entry.relpath)
            rows["key"].append(entry.path)
            rows["location"].append(entry.path)
            if isinstance(entry, FileProblem):
                rows["size"].append(None)
                rows["mtime"].append(None)
                rows["error_reason"].append(entry.reason)
                rows["error_detail"].append(entry.detail)
            else:
                rows["size"].append(entry.size)
                rows["mtime"].append(entry.mtime)
                rows["error_reason"].append(None)
                rows["error_detail"].append(None)
            seen_relpaths.add(entry.relpath)
            if len(rows["key"]) >= _BATCH:
                yield self._finish(rows)
                rows = {k: [] for k in rows}
        if rows["key"]:
            yield self._finish(rows)
        if self._labels_table is not None:
            labelled = self._labels_table.column("relpath").to_pylist()
            unmatched = [p for p in labelled if p not in seen_relpaths]
            self.report = {
                "label_rows": len(labelled),
                "label_rows_matched": len(labelled) - len(unmatched),
                "label_rows_unmatched": len(unmatched),
                "images_without_labels": len(seen_relpaths - set(labelled)),
                "warnings": list(self._labels_warnings),
            }
            if unmatched:
                self.report["warnings"].append(
                    f"{len(unmatched)} rows of {os.path.basename(self.labels or '')} name no image under the folder "
                    f"(first: {', '.join(unmatched[:3])})"
                )
                log.warning(
                    "%d rows of %s name no image under %s (first: %s)",
                    len(unmatched),
                    self.labels,
                    self.root,
                    ", ".join(unmatched[:3]),
                )
        self._report_skipped(skipped)

    def _report_skipped(self, skipped: list) -> None:
        """Count the links not followed in ``report``, with a warning naming the first few."""
        self.report.pop("links_not_followed", None)
        warnings = [w for w in self.report.get("warnings", []) if "--follow-symlinks" not in w]
        if skipped:
            self.report["links_not_followed"] = len(skipped)
            first = ", ".join(f"{s.relpath} -> {s.target}" for s in skipped[:3])
            warnings.append(
                f"{len(skipped)} symbolic links lead outside {self.root} and were not followed "
                f"(first: {first}); --follow-symlinks indexes what they lead to"
            )
        if warnings:
            self.report["warnings"] = warnings

    def _finish(self, rows: dict[str, list]) -> pa.RecordBatch:
        files = pa.table(
            {
                "relpath": pa.array(rows["relpath"], pa.string()),
                "key": pa.array(rows["key"], pa.string()),
                "location": pa.array(rows["location"], pa.string()),
                "size": pa.array(rows["size"], pa.int64()),
                "mtime": pa.array(rows["mtime"], pa.float64()),
                "error_reason": pa.array(rows["error_reason"], pa.string()),
                "error_detail": pa.array(rows["error_detail"], pa.string()),
            }
        )
        if self._labels_table is not None:
            files = files.join(self._labels_table, "relpath", join_type="left outer")
        files = files.drop(["relpath"])
        batches = files.combine_chunks().to_batches()
        if len(batches) == 1:
            return batches[0]
        return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]
