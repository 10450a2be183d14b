"""Loading the entities of a Darwin Core Archive into DuckDB: files in their encodings and dialects, several files per entity, header lines, defaults, trimmed names."""

from __future__ import annotations

import csv
import io
import logging
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from indexer.build.sources._archive import ArchiveFiles, normalise_encoding
from indexer.build.sources._common import (
    duckdb_message,
)
from indexer.build.sources._dwca_meta import Field, FileSpec
from indexer.errors import SourceError
from indexer.store.schema import canonical_column

log = logging.getLogger("indexer.build.sources.dwca")


@dataclass
class _Entity:
    """One core/extension loaded into a DuckDB table: ``_id`` and one column per field.

    Rows are numbered by DuckDB's ``rowid`` (insertion order, from 0): numbering them in the
    query that loads them would cost a serial window over the whole file.
    """

    spec: FileSpec
    table: str
    columns: list[tuple[Field, str]] = field(default_factory=list)  # field -> table column
    rows: int = 0

    def column(self, *names: str, uri_prefix: str | None = None) -> str | None:
        """Table column of the first field whose local name (case-insensitive) is in ``names``."""
        for name in names:
            for f, col in self.columns:
                if f.name.lower() == name.lower() and (uri_prefix is None or f.term.startswith(uri_prefix)):
                    return col
        return None

    def columns_named(self, name: str) -> list[str]:
        return [col for f, col in self.columns if f.name.lower() == name.lower()]


def _first_records(path: str, delimiter: str, quote: str, limit: int = 50) -> list[list[str]]:
    """The first records of a UTF-8 file, split like DuckDB will (to count columns before reading)."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
        head = fh.read(1 << 20)
    if not head:
        return []
    if len(delimiter) == 1 and len(quote) <= 1:
        reader = csv.reader(
            io.StringIO(head),
            delimiter=delimiter,
            quotechar=quote or None,
            doublequote=True,
            quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE,
            strict=False,
        )
        out = []
        try:
            for rec in reader:
                out.append(rec)
                if len(out) >= limit:
                    break
        except csv.Error:
            pass
        # The last record of a truncated 1 MiB head may be cut; it is still a valid lower bound.
        return [r for r in out if r != []]
    lines = [ln for ln in re.split(r"\r\n|\n|\r", head)[:limit] if ln]
    return [ln.split(delimiter) for ln in lines]


_TRIMMED_NAMES = {
    "associatedmedia",
    "accessuri",
    "identifier",
    "type",
    "format",
    "license",
    "rightsholder",
    "owner",
    "webstatement",
    "usageterms",
    "rights",
    "occurrenceid",
}


def _wants_trim(f: Field) -> bool:
    """Whether a field's values are trimmed: ids, media roles and the metadata columns."""
    return canonical_column(f.term) is not None or f.name.lower() in _TRIMMED_NAMES


class _Loader:
    """Loads the entities of one archive into one DuckDB connection, recording what it skipped."""

    def __init__(self, con, files: ArchiveFiles, base: str, report: dict[str, Any]):
        self.con = con
        self.files = files
        self.base = base
        self.report = report
        self.where = files.path

    def _member(self, location: str) -> str:
        loc = location.strip()
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+://", loc):
            # Some publishers write the file's URL; the file itself is in the archive.
            loc = posixpath.basename(loc.split("?", 1)[0])
        name = posixpath.normpath(posixpath.join(self.base, loc.replace("\\", "/")))
        found = self.files.find(name)
        if found is None:
            raise SourceError(
                f"{self.where}: meta.xml names the data file {location!r}, which is not in the archive", self.where
            )
        return found

    def prefetch(self, specs: list[FileSpec]) -> None:
        """Start copying the data files of ``specs`` out of the archive, in the order they are loaded."""
        items = []
        for spec in specs:
            try:
                encoding = normalise_encoding(spec.encoding, self.where)
                items += [(self._member(loc), encoding) for loc in spec.locations]
            except SourceError:
                pass  # reported when that entity is loaded
        self.files.prefetch(items)

    def load(self, spec: FileSpec, table: str) -> _Entity:
        encoding = normalise_encoding(spec.encoding, self.where)
        members = [self._member(loc) for loc in spec.locations]
        try:
            return self._load(spec, table, members, encoding)
        except _NotUtf8:
            log.warning(
                "%s: %s is declared %s but is not; reading it as Windows-1252",
                self.where,
                spec.label,
                spec.encoding or "UTF-8",
            )
            self.report["warnings"].append(
                f"{spec.label} is not valid {spec.encoding or 'UTF-8'}; read as Windows-1252"
            )
            return self._load(spec, table, members, "cp1252")

    def _load(self, spec: FileSpec, table: str, members: list[str], encoding: str) -> _Entity:
        import duckdb

        paths = [self.files.local_utf8(m, encoding) for m in members]
        heads = [_first_records(p, spec.delimiter or ",", spec.quote) for p in paths]
        delimiter = spec.delimiter
        if delimiter is None:
            # Not declared: the text guide says ",", but tab-separated files without the attribute
            # are common (and python-dwca-reader defaults to tab); take the one the file uses.
            tab_heads = [_first_records(p, "\t", spec.quote) for p in paths]
            width = lambda hs: max((len(r) for h in hs for r in h), default=0)  # noqa: E731
            delimiter = "\t" if width(tab_heads) > width(heads) else ","
            heads = tab_heads if delimiter == "\t" else heads
        used = [(p, m, h) for p, m, h in zip(paths, members, heads) if h]
        # Width of the data rows (header lines left out: a header naming one column more than the
        # rows hold means the descriptor and the data disagree); the header when there is no data.
        data_rows = [r for _, _, h in used for r in h[spec.header_lines :]]
        ncols = max((len(r) for r in data_rows or [r for _, _, h in used for r in h]), default=0)
        indexes = [f.index for f in spec.fields if f.index is not None]
        if spec.id_index is not None:
            indexes.append(spec.id_index)
        if used and indexes and max(indexes) >= ncols:
            worst = max(indexes)
            term = next((f.term for f in spec.fields if f.index == worst), "the id")
            raise SourceError(
                f"{self.where}: meta.xml maps column {worst} ({term}) of {spec.label}, but its rows have "
                f"{ncols} column{'s' if ncols != 1 else ''} (indexes start at 0): descriptor and data disagree",
                self.where,
            )
        entity = _Entity(spec, table)
        params: dict[str, Any] = {}
        selects = [
            f"nullif(trim(c{spec.id_index}), '') AS _id"
            if spec.id_index is not None
            else "CAST(NULL AS VARCHAR) AS _id"
        ]
        seen_terms: set[str] = set()
        for k, f in enumerate(spec.fields):
            if f.term in seen_terms:
                continue  # the same term twice: the first mapping wins
            seen_terms.add(f.term)
            col = f"f{k}"
            if f.index is None:
                if f.default is None:
                    continue
                params[f"d{k}"] = f.default
                expr = f"CAST($d{k} AS VARCHAR)"
            else:
                # Trimming costs a third of the load: only for values we match, link or show as columns.
                # (DuckDB already reads an empty field, quoted or not, as NULL.)
                expr = f"nullif(trim(c{f.index}), '')" if _wants_trim(f) else f"c{f.index}"
                if f.default is not None:
                    params[f"d{k}"] = f.default
                    expr = f"coalesce({expr}, CAST($d{k} AS VARCHAR))"
            selects.append(f"{expr} AS {col}")
            entity.columns.append((f, col))
        if not used:
            source = (
                "(SELECT "
                + ", ".join(f"CAST(NULL AS VARCHAR) AS c{i}" for i in range(max(ncols, 1, *(i + 1 for i in indexes))))
                + " LIMIT 0)"
            )
        else:
            params.update(
                files=[p for p, _, _ in used],
                skip=spec.header_lines,
                delim=delimiter,
                quote=spec.quote,
                cols={f"c{i}": "VARCHAR" for i in range(ncols)},
            )
            source = (
                "read_csv($files, header=false, skip=$skip, delim=$delim, quote=$quote, escape=$quote, "
                "columns=$cols, auto_detect=false, null_padding=true, strict_mode=false, "
                "max_line_size=33554432, parallel={parallel})"
            )
        sql = f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT {', '.join(selects)} FROM {source}"
        # DuckDB's parallel reader cannot pad short rows when quoted values hold newlines; it says
        # so, and the serial reader (slower) handles both.
        attempts = ["true", "false"] if spec.quote else ["true"]
        for n, parallel in enumerate(attempts):
            try:
                self.con.execute(sql.replace("{parallel}", parallel), params)
                break
            except duckdb.Error as exc:
                msg = str(exc)
                if "nvalid unicode" in msg and encoding == "utf-8":
                    raise _NotUtf8() from exc
                if "parallel" in msg.lower() and n + 1 < len(attempts):
                    continue
                raise SourceError(f"{self.where}: cannot read {spec.label}: {duckdb_message(exc)}", self.where) from exc
        entity.rows = self.con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
        return entity


class _NotUtf8(Exception):
    pass
