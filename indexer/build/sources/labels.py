"""Labels CSVs as people make them: read robustly, or refused with one line naming the file and the row.

:func:`read_table` reads a labels file (a CSV or TSV with a header row) into an Arrow table of
strings, whatever tool wrote it:

- encodings: UTF-8 with or without a byte-order mark, UTF-16 with one (Excel's "Unicode text"),
  and anything that is not UTF-8 as Windows-1252 (a superset of Latin-1, what Excel writes on
  Windows), with a warning;
- line endings: CRLF, LF and lone CR, mixed within one file; quoted values may span lines; blank
  lines are skipped;
- separators: comma, semicolon (Excel in many European locales) or tab, taken from the header;
- ragged rows: a row with fewer fields than the header is read with the missing ones empty, a row
  with more is read when the extra fields are empty (a trailing separator), and otherwise refused
  (its values would land under the wrong columns): :class:`~indexer.errors.SourceError` naming the
  file, the line and what it holds.

Rows are parsed by Arrow's CSV reader (C++, multi-threaded); Python sees only the header and the
ragged rows.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
from dataclasses import dataclass, field

import pyarrow as pa

from indexer.errors import SourceError

__all__ = ["LabelsTable", "read_table"]

log = logging.getLogger(__name__)

_SEPARATORS = (",", ";", "\t")


@dataclass
class LabelsTable:
    """A labels file read: ``table`` (one string column per header name, ``_line``: the line each
    row starts on), the ``encoding`` it was read as, and ``warnings`` for the build's summary."""

    table: pa.Table
    encoding: str
    warnings: list[str] = field(default_factory=list)


def _decode(data: bytes, path: str) -> tuple[bytes, str, str | None, str]:
    """(UTF-8 bytes, encoding read as, a warning or None, the text when it had to be decoded)."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise SourceError(f"labels file {path}: starts like UTF-16 but is not ({exc.reason})", path) from None
        return text.encode("utf-8"), "utf-16", None, text
    try:
        data.decode("utf-8")
        return data, "utf-8", None, ""
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        try:
            text = data.decode("cp1252")
            encoding = "windows-1252"
        except UnicodeDecodeError:
            text = data.decode("latin-1")
            encoding = "latin-1"
        warning = f"{os.path.basename(path)} is not UTF-8 (line {line}); read as {encoding}"
        log.warning("labels file %s is not UTF-8 (first at line %d); reading it as %s", path, line, encoding)
        return text.encode("utf-8"), encoding, warning, text


def _header(data: bytes, path: str) -> tuple[list[str], str]:
    """The header's names and the file's separator (the one the header uses most)."""
    head = data[: 1 << 16].decode("utf-8", errors="replace")
    first = head.splitlines()[0] if head.strip() else ""
    if not first.strip():
        raise SourceError(f"labels file {path} is empty: no header row", path)
    sep = max(_SEPARATORS, key=lambda s: (first.count(s), s == ","))
    names = next(csv.reader(io.StringIO(head, newline=""), delimiter=sep))
    out: list[str] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(names):
        name = raw.strip().lstrip("\ufeff") or f"column {i + 1}"
        if name in seen:
            raise SourceError(
                f"labels file {path}: the header names {name!r} twice (columns {seen[name] + 1} and {i + 1})", path
            )
        seen[name] = i
        out.append(name)
    return out, sep


def _line_of(data: bytes, text: str) -> int:
    """The line a row's text starts on (1-based), or 0 when it cannot be found."""
    at = data.find(text.encode("utf-8"))
    return data.count(b"\n", 0, at) + data.count(b"\r", 0, at) - data.count(b"\r\n", 0, at) + 1 if at >= 0 else 0


def read_table(path: str) -> LabelsTable:
    """Read the labels file at ``path`` (see the module docstring). Raises SourceError naming the
    file (and the line, for a row that cannot be read)."""
    import pyarrow.csv as pcsv

    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise SourceError(f"cannot read labels file {path}: {exc.strerror or exc}", path) from exc
    data, encoding, warning, _ = _decode(raw, path)
    names, sep = _header(data, path)
    ragged: list[str] = []

    def on_invalid(row) -> str:
        ragged.append(row.text)
        return "skip"

    try:
        table = pcsv.read_csv(
            io.BytesIO(data),
            read_options=pcsv.ReadOptions(column_names=names, skip_rows=1),
            parse_options=pcsv.ParseOptions(delimiter=sep, newlines_in_values=True, invalid_row_handler=on_invalid),
            convert_options=pcsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=True, quoted_strings_can_be_null=True
            ),
        )
    except pa.ArrowInvalid as exc:
        raise SourceError(f"cannot read labels file {path}: {exc}", path) from exc
    fixed = _fix_ragged(ragged, names, sep, data, path)
    lines = _lines(table.num_rows, sorted(line for line, _ in fixed))
    table = table.append_column("_line", pa.array(lines, pa.int64()))
    if fixed:
        extra = pa.table(
            {
                **{n: pa.array([row[i] or None for _, row in fixed], pa.string()) for i, n in enumerate(names)},
                "_line": pa.array([line for line, _ in fixed], pa.int64()),
            }
        )
        table = pa.concat_tables([table, extra]).sort_by("_line")
    warnings = [warning] if warning else []
    if fixed:
        first = min(line for line, _ in fixed)
        warnings.append(
            f"{os.path.basename(path)}: {len(fixed)} rows with missing (or extra empty) fields"
            + (f", the first on line {first}" if first else "")
            + "; read with those fields empty"
        )
    return LabelsTable(table, encoding, warnings)


def _fix_ragged(rows: list[str], names: list[str], sep: str, data: bytes, path: str) -> list[tuple[int, list]]:
    """(line, fields padded to the header's width) of each ragged row; SourceError for one with
    more values than the header has columns."""
    out = []
    for text in rows:
        fields = next(csv.reader(io.StringIO(text, newline=""), delimiter=sep), [])
        line = _line_of(data, text)
        if len(fields) > len(names) and any(f.strip() for f in fields[len(names) :]):
            where = f"line {line}" if line else "a row"
            preview = text if len(text) <= 80 else text[:77] + "..."
            raise SourceError(
                f"labels file {path}, {where}: {len(fields)} fields where the header has {len(names)} "
                f"({preview!r}); quote values that contain {'a tab' if sep == chr(9) else repr(sep)} or remove the extra ones",
                path,
            )
        out.append((line, (fields + [""] * len(names))[: len(names)]))
    return out


def _lines(n: int, skipped: list[int]) -> list[int]:
    """The line each of ``n`` regular rows starts on, rows being one line each, after the header,
    with the ragged rows' lines (``skipped``) left out of the sequence."""
    out, line, j = [], 2, 0
    for _ in range(n):
        while j < len(skipped) and skipped[j] <= line:
            if skipped[j] == line:
                line += 1
            j += 1
        out.append(line)
        line += 1
    return out
