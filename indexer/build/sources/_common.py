"""Helpers shared by the manifest, Darwin Core Archive and tar sources (private).

Everything here works on whole Arrow batches or builds SQL for DuckDB; the only per-row Python is
resolving local paths (one ``stat`` per local file, which the pipeline needs for change detection).
"""

from __future__ import annotations

import json
import os
import re
import stat as stat_mod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from indexer.errors import LocationError, SourceError
from indexer.locations import REMOTE_URL_RE, file_url_path, path_to_text, text_to_path

__all__ = [
    "BATCH_ROWS",
    "HTTP_URL_RE",
    "LocalPath",
    "connect",
    "duckdb_message",
    "fill_locations",
    "guard_reader",
    "json_members_sql",
    "json_object_sql",
    "json_object_text_sql",
    "object_members_sql",
    "path_to_text",
    "rebatch",
    "replace_columns",
    "resolve_local",
    "stat_local",
    "text_to_path",
    "with_locations",
]

#: Rows per batch a source yields: big enough for DuckDB/Arrow to be efficient, small enough that
#: the pipeline's memory does not depend on the size of the source.
BATCH_ROWS = 50_000

#: An http(s) URL with a host (RE2 and Python ``re`` syntax alike, used in SQL too).
HTTP_URL_RE = REMOTE_URL_RE
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def connect():
    """A fresh in-memory DuckDB connection for one source scan."""
    import duckdb

    return duckdb.connect(config={"preserve_insertion_order": True})


def duckdb_message(exc: BaseException, lines: int = 2) -> str:
    """The first lines of a DuckDB error, without the long option dump that follows them."""
    text = str(exc).strip()
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()][:lines]
    return " ".join(kept)


def json_members_sql(pairs: Sequence[tuple[str, str]], params: dict[str, object], prefix: str) -> list[str]:
    """SQL expressions, one per ``(key, value expression)``, each a JSON object member text
    (``"key":value``) or NULL when the value is NULL. Keys are bound as parameters
    ``{prefix}{n}`` (added to ``params``); values keep their JSON type (``to_json``)."""
    out = []
    for n, (key, expr) in enumerate(pairs):
        name = f"{prefix}{n}"
        params[name] = json.dumps(key, ensure_ascii=False) + ":"
        out.append(f"(${name} || to_json({expr}))")
    return out


def json_object_text_sql(members: Sequence[str]) -> str:
    """SQL for the JSON object text made of ``members`` (NULL ones left out); NULL when empty.

    String assembly with ``concat_ws`` (which skips NULLs) costs about half of building JSON
    values and merging them, and this runs once per image row.
    """
    if not members:
        return "CAST(NULL AS VARCHAR)"
    return f"nullif('{{' || concat_ws(',', {', '.join(members)}) || '}}', '{{}}')"


def json_object_sql(pairs: Sequence[tuple[str, str]], params: dict[str, object], prefix: str) -> str:
    """SQL for the JSON object text of ``(key, value expression)`` pairs, null values left out."""
    return json_object_text_sql(json_members_sql(pairs, params, prefix))


def object_members_sql(obj_text: str) -> str:
    """The members of a JSON object text (its braces stripped), to splice into another object."""
    return f"substr({obj_text}, 2, length({obj_text}) - 2)"


@dataclass(frozen=True)
class LocalPath:
    """A local file a media value resolved to (``path`` is text, see :func:`path_to_text`)."""

    path: str
    size: int | None
    mtime: float | None
    error_reason: str | None = None
    error_detail: str | None = None


def resolve_local(value: str, base_dir: str) -> tuple[str | None, str | None]:
    """Turn a media value that is not an http(s) URL into an absolute path.

    Accepts ``file://`` URLs, absolute paths and paths relative to ``base_dir`` (either slash).
    Returns ``(path, None)`` or ``(None, why)`` when the value is a URL of another scheme.
    """
    v = value.strip()
    m = _SCHEME.match(v)
    if m and len(m.group(1)) > 1:  # "C:" is a drive letter, not a scheme
        if m.group(1).lower() != "file":
            return None, f"unsupported URL scheme {m.group(1)!r}"
        try:
            return file_url_path(v), None
        except LocationError as exc:
            return None, str(exc)
    if os.sep != "/":
        v = v.replace("/", os.sep)
    else:
        v = v.replace("\\", "/")
    return os.path.normpath(os.path.join(base_dir, v)), None


def stat_local(path: str) -> LocalPath:
    """Size and mtime of a regular file, or the reason it cannot be used as an image."""
    try:
        st = os.stat(text_to_path(path))
    except FileNotFoundError:
        return LocalPath(path, None, None, "not-found", f"no such file: {path}")
    except PermissionError:
        return LocalPath(path, None, None, "permission-denied", f"permission denied: {path}")
    except OSError as exc:
        return LocalPath(path, None, None, "io-error", f"cannot stat {path}: {exc.strerror or exc}")
    if stat_mod.S_ISDIR(st.st_mode):
        return LocalPath(path, None, None, "is-a-directory", f"a directory, not a file: {path}")
    if not stat_mod.S_ISREG(st.st_mode):
        return LocalPath(path, None, None, "not-a-regular-file", f"not a regular file: {path}")
    return LocalPath(path, st.st_size, st.st_mtime)


def fill_locations(
    batch: pa.RecordBatch,
    base_dir: str,
    *,
    check_local: bool = True,
    invalid_reason: str = "invalid-url",
    bare_missing_reason: str = "invalid-url",
) -> pa.RecordBatch:
    """Resolve the ``location`` of rows that are not http(s) URLs into checked local paths.

    ``location`` must hold the raw media value. Rows that already have ``error_reason`` are left
    alone. A value that is neither an http(s) URL nor an existing local file becomes an error
    row (``invalid_reason`` for other URL schemes; ``not-found`` etc. for missing files, except
    that a missing relative path is ``bare_missing_reason``: in an archive, a media value such as
    ``id1`` is an identifier rather than a file), with the value and the path looked for in
    ``error_detail``. Local files get ``size`` and ``mtime``.
    """
    loc = batch.column("location")
    err = batch.column("error_reason")
    http = pc.fill_null(pc.match_substring_regex(loc, HTTP_URL_RE), False)
    todo = pc.and_(pc.invert(http), pc.and_(pc.is_valid(loc), pc.is_null(err)))
    idx = pc.indices_nonzero(todo).to_pylist()
    if not idx:
        return batch
    locations = loc.to_pylist()
    sizes = batch.column("size").to_pylist()
    mtimes = batch.column("mtime").to_pylist()
    reasons = err.to_pylist()
    details = batch.column("error_detail").to_pylist()
    for i in idx:
        raw = locations[i]
        path, why = resolve_local(raw, base_dir)
        if path is None:
            reasons[i], details[i] = invalid_reason, f"not an http(s) URL or a local file: {raw!r} ({why})"
            continue
        if not check_local:
            locations[i] = path
            continue
        found = stat_local(path)
        if found.error_reason is not None:
            relative = not os.path.isabs(raw.strip()) and not raw.startswith("file:")
            if found.error_reason == "not-found" and relative and bare_missing_reason != "not-found":
                reasons[i] = bare_missing_reason
                details[i] = f"not an http(s) URL or an existing file: {raw!r} (looked for {path})"
            else:
                locations[i] = path
                reasons[i], details[i] = found.error_reason, f"{found.error_detail} (media value {raw!r})"
            continue
        locations[i] = path
        sizes[i], mtimes[i] = found.size, found.mtime
    return with_locations(batch, locations, sizes, mtimes, reasons, details)


def with_locations(
    batch: pa.RecordBatch, locations: list, sizes: list, mtimes: list, reasons: list, details: list, **more: pa.Array
) -> pa.RecordBatch:
    """``batch`` with its resolved ``location``, ``size``, ``mtime`` and error columns (and any
    ``more`` columns) replaced by these values."""
    return replace_columns(
        batch,
        location=pa.array(locations, pa.string()),
        size=pa.array(sizes, pa.int64()),
        mtime=pa.array(mtimes, pa.float64()),
        error_reason=pa.array(reasons, pa.string()),
        error_detail=pa.array(details, pa.string()),
        **more,
    )


def replace_columns(batch: pa.RecordBatch, **columns: pa.Array) -> pa.RecordBatch:
    """``batch`` with the named columns replaced (or appended when absent)."""
    names = list(batch.schema.names)
    arrays = list(batch.columns)
    for name, arr in columns.items():
        if name in names:
            arrays[names.index(name)] = arr
        else:
            names.append(name)
            arrays.append(arr)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def guard_reader(reader: Iterable[pa.RecordBatch], what: str, path: str | None) -> Iterator[pa.RecordBatch]:
    """The batches of a DuckDB result reader, with errors raised while reading turned into
    SourceError(``what: <DuckDB's message>``) (a malformed line found late in a big file)."""
    import duckdb

    it = iter(reader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (duckdb.Error, pa.ArrowException) as exc:
            raise SourceError(f"{what}: {duckdb_message(exc)}", path) from exc
        yield batch


def rebatch(batches: Iterable[pa.RecordBatch], rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Re-cut a stream of batches into batches of about ``rows`` rows (empty ones dropped)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for b in batches:
        if b.num_rows == 0:
            continue
        if not pending and rows // 2 <= b.num_rows <= rows:
            yield b  # already a fine size: no copy
            continue
        pending.append(b)
        count += b.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending)
            head, tail = table.slice(0, rows), table.slice(rows)
            yield head.combine_chunks().to_batches()[0]
            pending = tail.combine_chunks().to_batches() if tail.num_rows else []
            count = tail.num_rows
    if count:
        table = pa.Table.from_batches(pending).combine_chunks()
        yield table.to_batches()[0]
