"""Darwin Core Archives: one image row per media item, with the specimen record's metadata.

An archive is a folder, a .zip or a .tar/.tgz with a ``meta.xml`` descriptor (at the top or in a
single sub-folder), or a single CSV/TSV with Darwin Core headers and no descriptor. The descriptor
is honoured: core and extensions, field index -> term, default values, separators, quoting,
encoding, header lines, one entity spread over several files.

Media come from the GBIF Simple Multimedia extension (``dc:identifier``), Audubon Core
(``ac:accessURI``), the EOL media extension (``ac:accessURI``), and, for records that have none
of those, the record's ``associatedMedia`` (a list split on ``|``, ``;``, and commas or spaces
before a URL). Media rows whose type or format says they are not still images are skipped and
counted. With a Taxon or Event core, an Occurrence extension supplies the occurrence fields of
an image: the occurrence its media row names (``dwc:occurrenceID``), else the core record's only
occurrence.

Rows are read, joined and shaped by DuckDB; Python only resolves media values that are local
paths. Counts of everything skipped are in :attr:`DwcaSource.report` after a scan.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import posixpath
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from indexer.errors import SourceError
from indexer.build.sources._archive import ArchiveFiles, normalise_encoding
from indexer.build.sources._common import (
    BATCH_ROWS,
    connect,
    duckdb_message,
    fill_locations,
    guard_reader,
    json_members_sql,
    json_object_sql,
    json_object_text_sql,
    object_members_sql,
    path_to_text,
    rebatch,
)
from indexer.store.schema import DWC_COLUMNS, canonical_column, quote_ident

__all__ = ["DwcaSource", "Descriptor", "FileSpec", "Field", "parse_meta_xml"]

log = logging.getLogger(__name__)

# -- row types ---------------------------------------------------------------------------------

_MEDIA_ROW_TYPES = {
    "http://rs.gbif.org/terms/1.0/multimedia": "multimedia",
    "http://rs.gbif.org/terms/1.0/image": "multimedia",  # GBIF's older Simple Images extension
    "http://rs.tdwg.org/ac/terms/multimedia": "audubon",
    "http://eol.org/schema/media/document": "eol",
}
_OCCURRENCE = "occurrence"
#: Cores whose records are not occurrences: an Occurrence extension then supplies those.
_NON_RECORD_CORES = {"taxon", "event"}

#: Terms never mapped onto a record column: they are ours, or only meaningful on a media row.
_NOT_RECORD_COLUMNS = {"mediaURL", "mediaFormat", "recordID"}

_IMAGE_FORMATS = ("jpg", "jpeg", "png", "gif", "tif", "tiff", "webp", "bmp", "jp2", "heic", "avif")

_METADATA_FILES = {"eml.xml", "metadata.xml"}

# An associatedMedia list: "|" and ";" always separate; a comma separates when a URL or a space
# follows it (IIIF URLs contain bare commas); white space separates when a URL follows it.
_ASSOC_COMMA = r",\s*(https?://)|,\s+"
_ASSOC_SPACE = r"\s+(https?://)"


def _local_name(term: str) -> str:
    term = term.strip()
    return re.split(r"[/#:]", term.rstrip("/#"))[-1] or term


def _row_kind(row_type: str) -> str:
    return _local_name(row_type).lower()


# -- the descriptor ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One ``<field>`` (or the id): the column ``index`` (None: default only), its term and default."""

    index: int | None
    term: str
    default: str | None = None

    @property
    def name(self) -> str:
        return _local_name(self.term)


@dataclass(frozen=True)
class FileSpec:
    """A ``<core>`` or ``<extension>``: where its rows are and how to read them."""

    row_type: str
    locations: tuple[str, ...]
    encoding: str | None = None
    delimiter: str | None = None  # None: not declared (",", or tab when the file says so)
    quote: str = '"'  # "" means no quoting
    header_lines: int = 0
    id_index: int | None = None
    fields: tuple[Field, ...] = ()
    is_core: bool = True

    @property
    def kind(self) -> str:
        return _row_kind(self.row_type)

    @property
    def label(self) -> str:
        return self.locations[0] if len(self.locations) == 1 else f"{self.locations[0]} (+{len(self.locations) - 1})"


@dataclass(frozen=True)
class Descriptor:
    core: FileSpec
    extensions: tuple[FileSpec, ...] = ()
    metadata: str | None = None
    #: defects that do not stop the archive (an extension without files, a missing EML file)
    warnings: tuple[str, ...] = ()


def _unescape(value: str) -> str:
    return value.replace("\\t", "\t").replace("\\n", "\n").replace("\\r", "\r").replace("\\\\", "\\")


def _int_attr(el: ET.Element, name: str, where: str, default: int | None) -> int | None:
    raw = el.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise SourceError(f"{where}: meta.xml has {name}={raw!r}, not a number", where) from None
    if value < 0:
        raise SourceError(f"{where}: meta.xml has a negative {name} ({value})", where)
    return value


def _strip_ns(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def parse_meta_xml(data: bytes, where: str) -> Descriptor:
    """Parse a Darwin Core Archive descriptor. Raises SourceError naming ``where`` on any defect.

    Defaults follow the Darwin Core text guide (``,``, ``"``, UTF-8, no header lines); a
    ``fieldsTerminatedBy`` that is absent is left as None for the reader to settle.
    """
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise SourceError(f"{where}: meta.xml is not well-formed XML ({exc})", where) from exc
    if _strip_ns(root.tag) != "archive":
        raise SourceError(f"{where}: meta.xml's root element is <{_strip_ns(root.tag)}>, not <archive>", where)
    cores = [el for el in root if _strip_ns(el.tag) == "core"]
    if len(cores) != 1:
        raise SourceError(f"{where}: meta.xml must have exactly one <core> (found {len(cores)})", where)
    core = _parse_file(cores[0], where, is_core=True)
    extensions = []
    warnings: list[str] = []
    for el in root:
        if _strip_ns(el.tag) != "extension":
            continue
        try:
            extensions.append(_parse_file(el, where, is_core=False))
        except _MissingFiles as exc:
            kind = _row_kind(exc.row_type)
            if exc.row_type.strip().lower() in _MEDIA_ROW_TYPES:
                raise SourceError(
                    f"{where}: meta.xml: media extension {exc.row_type} names no <files>", where
                ) from None
            warnings.append(f"meta.xml: extension {exc.row_type or kind} names no data file; ignored")
    return Descriptor(core=core, extensions=tuple(extensions), metadata=root.get("metadata"), warnings=tuple(warnings))


class _MissingFiles(Exception):
    def __init__(self, row_type: str):
        self.row_type = row_type


def _parse_file(el: ET.Element, where: str, *, is_core: bool) -> FileSpec:
    row_type = (el.get("rowType") or "http://rs.tdwg.org/dwc/xsd/simpledarwincore/SimpleDarwinRecord").strip()
    locations: list[str] = []
    for files in el:
        if _strip_ns(files.tag) == "files":
            locations += [(loc.text or "").strip() for loc in files if _strip_ns(loc.tag) == "location"]
    locations = [loc for loc in locations if loc]
    if not locations:
        if is_core:
            raise SourceError(f"{where}: meta.xml: the core names no data file (<files><location>)", where)
        raise _MissingFiles(row_type)
    id_index: int | None = None
    fields: list[Field] = []
    id_tag = "id" if is_core else "coreid"
    for child in el:
        tag = _strip_ns(child.tag)
        if tag == id_tag:
            id_index = _int_attr(child, "index", where, None)
        elif tag == "field":
            term = (child.get("term") or "").strip()
            if not term:
                raise SourceError(f"{where}: meta.xml: a <field> of {row_type} has no term", where)
            fields.append(Field(_int_attr(child, "index", where, None), term, child.get("default")))
    if not is_core and id_index is None:
        raise SourceError(f"{where}: meta.xml: extension {row_type} has no <coreid index=...>", where)
    delimiter = el.get("fieldsTerminatedBy")
    return FileSpec(
        row_type=row_type,
        locations=tuple(locations),
        encoding=el.get("encoding"),
        delimiter=_unescape(delimiter) if delimiter not in (None, "") else None,
        quote=_unescape(el.get("fieldsEnclosedBy", '"')),
        header_lines=_int_attr(el, "ignoreHeaderLines", where, 0) or 0,
        id_index=id_index,
        fields=tuple(fields),
        is_core=is_core,
    )


# -- loading entities into DuckDB --------------------------------------------------------------


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
        # so, and the serial reader (a third slower) handles both.
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


# -- the source --------------------------------------------------------------------------------


class DwcaSource:
    """Image rows of a Darwin Core Archive (folder, .zip, .tar/.tgz, or a single DwC CSV/TSV file).

    ``key`` is ``{name}#{record id}#{media URL}`` (for a media row without a URL,
    ``{name}#{record id}#{file}:{row}``), where ``name`` defaults to the archive's absolute path:
    give a stable ``name`` when the same archive is re-downloaded under another file name, so
    its images keep their keys. ``location`` is the media URL, or the absolute path of a media
    value that is a local file (relative paths resolve against the archive's folder, or the
    folder that holds a zip/tar archive). ``recordID`` is the core id (trimmed).

    ``report`` (filled by :meth:`scan`) counts: ``records``, ``image_rows``, ``error_rows``,
    ``records_without_media``, ``orphan_extension_rows`` (and ``orphans_by_file``),
    ``non_image_media_rows``, ``duplicate_media_rows``, ``duplicate_core_ids``, and lists
    ``warnings``. The archive is opened and its descriptor checked on construction, so a broken
    archive fails before anything is encoded.
    """

    def __init__(self, path: str | os.PathLike, *, name: str | None = None):
        self.path = os.path.abspath(os.fspath(path))
        if not os.path.exists(self.path):
            raise SourceError(f"Darwin Core Archive not found: {self.path}", self.path)
        self.name = name or path_to_text(self.path)
        self.report: dict[str, Any] = {}
        self._unpacked: ArchiveFiles | None = None
        opened = self._open()
        files, self.descriptor, _ = opened.__enter__()
        if files.kind == "tar":
            # A compressed tar cannot be read at random: keep it unpacked for the first scan (its
            # temporary folder goes when that scan ends, or with this object).
            self._unpacked = files
        else:
            opened.__exit__(None, None, None)

    def __repr__(self) -> str:
        return f"DwcaSource({self.path!r})"

    # -- opening ---------------------------------------------------------------------------------

    def _open(self) -> _Opened:
        files, self._unpacked = getattr(self, "_unpacked", None), None
        return _Opened(self, files)

    def _media_base_dir(self, base: str) -> str:
        """Where relative media paths start: the folder meta.xml is in, or the one holding the file."""
        if os.path.isdir(self.path):
            return os.path.join(self.path, *base.split("/")) if base else self.path
        return os.path.dirname(self.path)

    # -- scanning --------------------------------------------------------------------------------

    def scan(self) -> Iterator[pa.RecordBatch]:
        report: dict[str, Any] = {
            "records": 0,
            "image_rows": 0,
            "error_rows": 0,
            "records_without_media": 0,
            "orphan_extension_rows": 0,
            "orphans_by_file": {},
            "non_image_media_rows": 0,
            "duplicate_media_rows": 0,
            "duplicate_core_ids": 0,
            "warnings": [],
        }
        self.report = report
        with self._open() as (files, descriptor, base):
            for w in descriptor.warnings:
                log.warning("%s: %s", self.name, w)
                report["warnings"].append(w)
            con = connect()
            try:
                query, params = _Plan(con, files, base, descriptor, report, self.name).build()
                media_base = self._media_base_dir(base)
                # Row order within the output does not matter (keys do): let DuckDB stream the join
                # without keeping order, which it does with less memory.
                con.execute("SET preserve_insertion_order = false")
                reader = con.sql(query, params=params).to_arrow_reader(BATCH_ROWS)
                for batch in rebatch(guard_reader(reader, f"{self.path}: cannot read the archive's rows", self.path)):
                    batch = fill_locations(batch, media_base)
                    errors = batch.num_rows - batch.column("error_reason").null_count
                    report["error_rows"] += errors
                    report["image_rows"] += batch.num_rows - errors
                    yield batch
            finally:
                con.close()
        self._log_report()

    def _log_report(self) -> None:
        r = self.report
        log.info(
            "%s: %d records, %d image rows, %d media rows without a usable URL, %d records without media",
            self.name,
            r["records"],
            r["image_rows"],
            r["error_rows"],
            r["records_without_media"],
        )
        if r["orphan_extension_rows"]:
            log.warning(
                "%s: %d extension rows name a core id that does not exist (%s); they were skipped",
                self.name,
                r["orphan_extension_rows"],
                ", ".join(f"{k}: {v}" for k, v in r["orphans_by_file"].items()),
            )
        if not r["image_rows"] and not r["error_rows"]:
            log.warning("%s: no image in this archive (%d records, none with a still image)", self.name, r["records"])
        if r["duplicate_media_rows"]:
            log.warning(
                "%s: %d media rows repeat an image of the same record; kept once", self.name, r["duplicate_media_rows"]
            )
        if r["non_image_media_rows"]:
            log.info(
                "%s: %d media rows are not still images (sound, video, text); skipped",
                self.name,
                r["non_image_media_rows"],
            )


class _Opened:
    """Context manager: the archive's files, its descriptor and the folder meta.xml is in."""

    def __init__(self, source: DwcaSource, files: ArchiveFiles | None = None):
        self.source = source
        self.files: ArchiveFiles | None = files

    def __enter__(self) -> tuple[ArchiveFiles, Descriptor, str]:
        src = self.source
        if self.files is None:
            if os.path.isfile(src.path) and _looks_like_text_table(src.path):
                files = ArchiveFiles.single_file(src.path)
                self.files = files
                return files, _simple_descriptor(files, files.names[0], src.path), ""
            self.files = ArchiveFiles(src.path)
        files = self.files
        try:
            descriptor, base = _find_descriptor(files, src.path)
        except BaseException:
            files.close()
            raise
        return files, descriptor, base

    def __exit__(self, *exc) -> None:
        if self.files is not None:
            self.files.close()


def _looks_like_text_table(path: str) -> bool:
    return path.lower().endswith((".csv", ".tsv", ".txt", ".tab"))


def _find_descriptor(files: ArchiveFiles, where: str) -> tuple[Descriptor, str]:
    metas = [n for n in files.names if posixpath.basename(n).lower() == "meta.xml"]
    top = [n for n in metas if "/" not in n]
    if top:
        meta, base = top[0], ""
    elif len(metas) == 1:
        meta, base = metas[0], posixpath.dirname(metas[0])
    elif len(metas) > 1:
        raise SourceError(
            f"{where}: several meta.xml files ({', '.join(metas[:4])}); cannot tell which is the archive's", where
        )
    else:
        return _simple_descriptor_in(files, where), ""
    descriptor = parse_meta_xml(files.read(meta), where)
    if descriptor.metadata:
        name = posixpath.normpath(posixpath.join(base, descriptor.metadata.strip()))
        if files.find(name) is None:
            # The EML metadata is not needed to index images: say so and go on.
            missing = f"meta.xml names the metadata file {descriptor.metadata}, which is missing; going on without it"
            descriptor = dataclasses.replace(descriptor, warnings=descriptor.warnings + (missing,))
    return descriptor, base


def _simple_descriptor_in(files: ArchiveFiles, where: str) -> Descriptor:
    """An archive without meta.xml: exactly one data file (and optionally eml.xml / metadata.xml)."""
    data = [n for n in files.names if posixpath.basename(n).lower() not in _METADATA_FILES]
    if files.kind == "folder":
        data = [n for n in data if "/" not in n]
    if len(data) != 1:
        listed = ", ".join(data[:5]) + (" ..." if len(data) > 5 else "")
        if not data:
            raise SourceError(f"{where}: no meta.xml and no data file: not a Darwin Core Archive", where)
        raise SourceError(
            f"{where}: no meta.xml, and more than one file that could be the data ({listed}); "
            "an archive without meta.xml must hold a single CSV/TSV (plus eml.xml)",
            where,
        )
    return _simple_descriptor(files, data[0], where)


def _simple_descriptor(files: ArchiveFiles, member: str, where: str) -> Descriptor:
    """Descriptor of a single CSV/TSV whose header row names Darwin Core terms."""
    import duckdb

    def sniff(encoding: str):
        path = files.local_utf8(member, encoding)
        con = connect()
        try:
            return con.execute(
                "SELECT Delimiter, Quote, Columns FROM sniff_csv($p, header=true, all_varchar=true)", {"p": path}
            ).fetchall()
        finally:
            con.close()

    encoding, warnings = "UTF-8", ()
    try:
        try:
            row = sniff("utf-8")
        except (SourceError, duckdb.Error) as exc:
            text = str(exc)
            if "nvalid unicode" not in text and "not valid utf-8" not in text:
                raise
            # Exports without meta.xml say nothing of their encoding: not UTF-8 means Windows-1252.
            log.warning("%s: %s is not valid UTF-8; reading it as Windows-1252", where, member)
            encoding, warnings = "windows-1252", (f"{member} is not valid UTF-8; read as Windows-1252",)
            row = sniff("cp1252")
    except duckdb.Error as exc:
        raise SourceError(f"{where}: cannot read {member} as CSV/TSV: {duckdb_message(exc)}", where) from exc
    if not row or not row[0][2]:
        raise SourceError(f"{where}: {member} is empty: no header row of Darwin Core terms", where)
    delimiter, quote, columns = row[0]
    names = [c["name"] if isinstance(c, dict) else c[0] for c in columns]
    recognised = [n for n in names if canonical_column(n) or n.strip().lower() in ("associatedmedia", "id")]
    if not recognised:
        raise SourceError(f"{where}: {member} has no Darwin Core column headers (found: {', '.join(names[:8])})", where)
    lowered = [n.strip().lstrip("\ufeff").lower() for n in names]
    id_index = next((lowered.index(c) for c in ("id", "occurrenceid", "gbifid", "catalognumber") if c in lowered), None)
    fields = tuple(Field(i, n.strip().lstrip("\ufeff")) for i, n in enumerate(names))
    spec = FileSpec(
        row_type="http://rs.tdwg.org/dwc/terms/Occurrence",
        locations=(member,),
        encoding=encoding,
        delimiter=delimiter or ",",
        quote="" if quote in (None, "", "\x00", "(empty)") else quote,
        header_lines=1,
        id_index=id_index,
        fields=fields,
    )
    return Descriptor(core=spec, warnings=warnings)


# -- the query ---------------------------------------------------------------------------------


def _media_role_columns(ent: _Entity) -> dict[str, list[str]]:
    """Columns of a media entity feeding each output role, in order of preference."""

    def pick(*names: str, uri_prefix: str | None = None) -> list[str]:
        out = []
        for n in names:
            c = ent.column(n, uri_prefix=uri_prefix)
            if c is not None and c not in out:
                out.append(c)
        return out

    return {
        "url": pick("accessURI") + pick("identifier"),
        "type": ent.columns_named("type"),
        "format": pick("format"),
        "license": pick("license", "WebStatement", "UsageTerms")
        + pick("rights", uri_prefix="http://purl.org/dc/terms/"),
        "rightsHolder": pick("rightsHolder", "Owner"),
        "occurrenceID": pick("occurrenceID"),
    }


def _coalesce(cols: list[str], alias: str) -> str | None:
    if not cols:
        return None
    exprs = [f"{alias}.{c}" for c in cols]
    return exprs[0] if len(exprs) == 1 else f"coalesce({', '.join(exprs)})"


class _Plan:
    """Loads the archive's entities and builds the one query that yields its image rows."""

    def __init__(self, con, files: ArchiveFiles, base: str, descriptor: Descriptor, report: dict, name: str):
        self.con = con
        self.loader = _Loader(con, files, base, report)
        self.descriptor = descriptor
        self.report = report
        self.name = name
        self.params: dict[str, Any] = {}

    def build(self) -> tuple[str, dict[str, Any]]:
        con, d = self.con, self.descriptor
        self.loader.prefetch([d.core, *d.extensions])
        core = self.loader.load(d.core, "core")
        # Records without an id still count; give them one (it cannot be linked to, so no extension row matches it).
        occ_field = core.column("occurrenceID")
        fallback = f"nullif(trim({occ_field}), '')" if occ_field else "NULL"
        con.execute(f"UPDATE core SET _id = coalesce({fallback}, 'row-' || (rowid + 1)) WHERE _id IS NULL")
        self.report["records"] = core.rows
        self.report["duplicate_core_ids"] = con.execute("SELECT count(*) - count(DISTINCT _id) FROM core").fetchall()[
            0
        ][0]
        if self.report["duplicate_core_ids"]:
            log.warning(
                "%s: core rows repeating an id already used: %d", self.loader.where, self.report["duplicate_core_ids"]
            )

        core_is_record = d.core.kind not in _NON_RECORD_CORES
        media: list[_Entity] = []
        occ: _Entity | None = None
        others: list[_Entity] = []
        for n, spec in enumerate(d.extensions):
            if d.core.id_index is None:
                raise SourceError(
                    f"{self.loader.where}: meta.xml declares extensions but the core has no <id index=...> to link them",
                    self.loader.where,
                )
            ent = self.loader.load(spec, f"ext{n}")
            orphans = con.execute(
                f"SELECT count(*) FROM ext{n} e WHERE NOT EXISTS (SELECT 1 FROM core c WHERE c._id = e._id)"
            ).fetchall()[0][0]
            if orphans:
                self.report["orphan_extension_rows"] += orphans
                self.report["orphans_by_file"][spec.label] = self.report["orphans_by_file"].get(spec.label, 0) + orphans
            if spec.row_type.strip().lower() in _MEDIA_ROW_TYPES:
                media.append(ent)
            elif spec.kind == _OCCURRENCE and not core_is_record and occ is None:
                occ = ent
            else:
                others.append(ent)

        self.media_cte = self._media_cte(core, media, occ)
        self.report["records_without_media"] = con.execute(
            self.media_cte
            + "SELECT count(*) FROM core c WHERE NOT EXISTS (SELECT 1 FROM media m WHERE m._coreid = c._id)",
            self._params_for(self.media_cte),
        ).fetchall()[0][0]
        aggs = self._build_aggregates(others)
        for ent in others:
            con.execute(f"DROP TABLE {ent.table}")
        return self._final_query(core, occ, aggs, core_is_record)

    # media -------------------------------------------------------------------------------------

    def _media_cte(self, core: _Entity, media: list[_Entity], occ: _Entity | None) -> str:
        """``WITH`` clauses defining ``media``: one row per media item of every media extension
        (still images only) and, for records with none of those, per ``associatedMedia`` entry.

        A CTE rather than a table: the queries that use it read only the columns they need, and
        a million media rows are not copied. Its parameters are added to ``self.params``.
        """
        con, params = self.con, self.params
        cols = "_coreid, _orow, _src, _seq, url, mformat, mlicense, mrights, mx"
        if occ is not None:
            occ_id = occ.column("occurrenceID")
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE occ_single AS SELECT _id AS _coreid, min(rowid) AS _orow "
                f"FROM {occ.table} GROUP BY _id HAVING count(*) = 1"
            )
            if occ_id:
                con.execute(
                    f"CREATE OR REPLACE TEMP TABLE occ_by_id AS SELECT _id AS _coreid, {occ_id} AS oid, min(rowid) AS _orow "
                    f"FROM {occ.table} WHERE {occ_id} IS NOT NULL GROUP BY ALL"
                )
        parts = []
        for n, ent in enumerate(media):
            roles = _media_role_columns(ent)
            params[f"src{n}"] = ent.spec.label
            url = _coalesce(roles["url"], "e") or "CAST(NULL AS VARCHAR)"
            mtype = _coalesce(roles["type"], "e")
            mformat = _coalesce(roles["format"], "e")
            is_image = ["TRUE"]
            if mtype:
                is_image.append(
                    f"({mtype} IS NULL OR (regexp_matches(lower({mtype}), '(image|photo|photograph)$') "
                    f"AND NOT regexp_matches(lower({mtype}), 'movingimage$')))"
                )
            if mformat:
                fmts = ", ".join(f"'{f}'" for f in _IMAGE_FORMATS)  # constants of ours, not data
                is_image.append(
                    f"({mformat} IS NULL OR lower({mformat}) LIKE 'image/%' OR lower({mformat}) IN ({fmts}))"
                )
            where = " AND ".join(is_image)
            self.report["non_image_media_rows"] += con.execute(
                f"SELECT count(*) FROM {ent.table} e WHERE NOT ({where})"
            ).fetchall()[0][0]
            used = {roles[r][0] for r in ("url", "format", "license", "rightsHolder", "occurrenceID") if roles[r]}
            extras = _unique_keys([("media:" + f.name, f"e.{col}") for f, col in ent.columns if col not in used])
            mx = json_object_sql(extras, params, f"m{n}k")
            orow, joins = "CAST(NULL AS BIGINT)", ""
            if occ is not None:
                joins, orow = " LEFT JOIN occ_single s ON s._coreid = e._id", "s._orow"
                if occ.column("occurrenceID") and roles["occurrenceID"]:
                    joins += f" LEFT JOIN occ_by_id b ON b._coreid = e._id AND b.oid = e.{roles['occurrenceID'][0]}"
                    orow = "coalesce(b._orow, s._orow)"
            parts.append(
                f"SELECT e._id AS _coreid, {orow} AS _orow, $src{n} AS _src, e.rowid + 1 AS _seq, {url} AS url, "
                f"{mformat or 'CAST(NULL AS VARCHAR)'} AS mformat, "
                f"{_coalesce(roles['license'], 'e') or 'CAST(NULL AS VARCHAR)'} AS mlicense, "
                f"{_coalesce(roles['rightsHolder'], 'e') or 'CAST(NULL AS VARCHAR)'} AS mrights, {mx} AS mx "
                f"FROM {ent.table} e{joins} WHERE {where}"
            )
        if not parts:
            parts.append(
                "SELECT CAST(NULL AS VARCHAR) AS _coreid, CAST(NULL AS BIGINT) AS _orow, CAST(NULL AS VARCHAR) AS _src, "
                "CAST(NULL AS BIGINT) AS _seq, CAST(NULL AS VARCHAR) AS url, CAST(NULL AS VARCHAR) AS mformat, "
                "CAST(NULL AS VARCHAR) AS mlicense, CAST(NULL AS VARCHAR) AS mrights, CAST(NULL AS VARCHAR) AS mx WHERE FALSE"
            )
        ctes = [f"ext_media AS ({' UNION ALL '.join(parts)})"]
        # associatedMedia: only for records with no media row in any extension.
        assoc = []
        for ent, orow in ((core, "CAST(NULL AS BIGINT)"), (occ, "t.rowid")):
            col = ent.column("associatedMedia") if ent is not None else None
            if ent is None or col is None:
                continue
            params.update(assoc_comma=_ASSOC_COMMA, assoc_space=_ASSOC_SPACE, assoc_src="associatedMedia")
            split = (
                f"regexp_split_to_array(regexp_replace(regexp_replace(t.{col}, $assoc_comma, '|\\1', 'g'), "
                "$assoc_space, '|\\1', 'g'), '[|;]')"
            )
            assoc.append(
                f"SELECT _coreid, _orow, $assoc_src AS _src, _seq, nullif(trim(u), '') AS url, CAST(NULL AS VARCHAR) AS mformat, "
                "CAST(NULL AS VARCHAR) AS mlicense, CAST(NULL AS VARCHAR) AS mrights, CAST(NULL AS VARCHAR) AS mx "
                f"FROM (SELECT t._id AS _coreid, {orow} AS _orow, t.rowid + 1 AS _seq, unnest({split}) AS u FROM {ent.table} t "
                f"WHERE t.{col} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ext_media x WHERE x._coreid = t._id)) "
                "WHERE nullif(trim(u), '') IS NOT NULL"
            )
        if assoc:
            ctes.append(f"media AS (SELECT {cols} FROM ext_media UNION ALL {' UNION ALL '.join(assoc)})")
        else:
            ctes.append(f"media AS (SELECT {cols} FROM ext_media)")
        return "WITH " + ", ".join(ctes) + " "

    # one-to-many extensions ------------------------------------------------------------------

    def _build_aggregates(self, others: list[_Entity]) -> list[tuple[str, str, str | None]]:
        """Per core id, each other extension as a JSON list of objects (table, extra key, vernacular column)."""
        out = []
        taken: set[str] = set()
        for n, ent in enumerate(others):
            key = _local_name(ent.spec.row_type) or f"extension{n}"
            while key in taken:
                key += "_"
            taken.add(key)
            params: dict[str, Any] = {}
            pairs = _unique_keys([(f.name, col) for f, col in ent.columns])
            obj = json_object_sql(pairs, params, "a")
            vern = ent.column("vernacularName") if ent.spec.kind == "vernacularname" else None
            vern_sql = f", string_agg(DISTINCT {vern}, '; ') AS vn" if vern else ""
            self.con.execute(
                f"CREATE OR REPLACE TEMP TABLE agg{n} AS SELECT _id AS _coreid, "
                f"'[' || string_agg(coalesce({obj}, '{{}}'), ',') || ']' AS j{vern_sql} "
                f"FROM {ent.table} WHERE _id IS NOT NULL GROUP BY _id",
                params,
            )
            out.append((f"agg{n}", key, "vn" if vern else None))
        return out

    # the output ----------------------------------------------------------------------------------

    def _final_query(
        self, core: _Entity, occ: _Entity | None, aggs, core_is_record: bool
    ) -> tuple[str, dict[str, Any]]:
        params = self.params
        params["name"] = self.name
        record_cols: dict[str, list[str]] = {}  # canonical column -> expressions in precedence order
        extra_pairs: list[tuple[str, str]] = []
        extra_index: dict[str, int] = {}

        def add(ent: _Entity, alias: str, first: bool) -> None:
            for f, col in ent.columns:
                canon = canonical_column(f.term)
                expr = f"{alias}.{col}"
                if canon is not None and canon not in _NOT_RECORD_COLUMNS:
                    exprs = record_cols.setdefault(canon, [])
                    # the occurrence is more specific than its taxon/event: it goes first
                    exprs.insert(0, expr) if first else exprs.append(expr)
                    continue
                key = f.name
                if key in extra_index:
                    i = extra_index[key]
                    old_key, old_expr = extra_pairs[i]
                    extra_pairs[i] = (
                        old_key,
                        f"coalesce({expr}, {old_expr})" if first else f"coalesce({old_expr}, {expr})",
                    )
                else:
                    extra_index[key] = len(extra_pairs)
                    extra_pairs.append((key, expr))

        add(core, "c", first=False)
        if occ is not None:
            add(occ, "o", first=True)
        if core_is_record:
            # In an Occurrence core the id is the occurrence's identifier (unless we made it up).
            record_cols.setdefault("occurrenceID", []).append(
                "CASE WHEN c._id <> 'row-' || (c.rowid + 1) THEN c._id END"
            )

        selects = [
            "CASE WHEN m.url IS NULL THEN $name || '#' || m._coreid || '#' || m._src || ':' || m._seq "
            "ELSE $name || '#' || m._coreid || '#' || m.url END AS key",
            "m.url AS location",
            "CAST(NULL AS BIGINT) AS size",
            "CAST(NULL AS DOUBLE) AS mtime",
            "CASE WHEN m.url IS NULL THEN 'no-media-url' END AS error_reason",
            "CASE WHEN m.url IS NULL THEN 'media row ' || m._seq || ' of ' || m._src || ' (record ' || m._coreid "
            "|| ') has no URL' END AS error_detail",
            "m._coreid AS recordID",
        ]
        for canon in DWC_COLUMNS:
            if canon in ("recordID", "mediaURL", "mediaFormat"):
                continue
            exprs = list(record_cols.get(canon, []))
            if canon == "license":
                exprs.insert(0, "m.mlicense")
            elif canon == "rightsHolder":
                exprs.insert(0, "m.mrights")
            if canon == "vernacularName":
                exprs += [f"{t}.{v}" for t, _, v in aggs if v]
            if not exprs:
                continue
            value = exprs[0] if len(exprs) == 1 else f"coalesce({', '.join(exprs)})"
            selects.append(f"{value} AS {quote_ident(canon)}")
        selects += ["m.url AS mediaURL", "m.mformat AS mediaFormat"]

        # Members of the record's terms, then the media row's ("media:" keys) and one list per other
        # extension: keys cannot clash, so the object is assembled as text (see json_object_text_sql).
        members = json_members_sql(_unique_keys(extra_pairs), params, "x")
        members.append(object_members_sql("m.mx"))
        joins = ["JOIN core c ON c._id = m._coreid"]
        if occ is not None:
            joins.append(f"LEFT JOIN {occ.table} o ON o.rowid = m._orow")
        for n, (table, key, _) in enumerate(aggs):
            params[f"g{n}"] = json.dumps(key, ensure_ascii=False) + ":"
            joins.append(f"LEFT JOIN {table} ON {table}._coreid = m._coreid")
            members.append(f"($g{n} || {table}.j)")
        extra = json_object_text_sql(members)
        selects.append(f"{extra} AS extra")

        body = f"{self.media_cte}SELECT {', '.join(selects)} FROM media m {' '.join(joins)}"
        # A cheap screen first (distinct 64-bit hashes of the media rows' keys; a collision only
        # costs the exact count below), then the exact count through the join when it may matter.
        cte, cte_params = self.media_cte, self._params_for(self.media_cte)
        maybe = (
            self.report["duplicate_core_ids"] > 0
            or self.con.execute(
                cte + "SELECT count(*) > count(DISTINCT hash(_coreid, coalesce(url, _src || ':' || _seq))) FROM media",
                cte_params,
            ).fetchall()[0][0]
        )
        dup = 0
        if maybe:
            dup = self.con.execute(
                cte
                + "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM media m JOIN core c ON c._id = m._coreid "
                "GROUP BY m._coreid, coalesce(m.url, m._src || ':' || m._seq) HAVING count(*) > 1)",
                cte_params,
            ).fetchall()[0][0]
        self.report["duplicate_media_rows"] = int(dup)
        if dup:
            body += " QUALIFY row_number() OVER (PARTITION BY key ORDER BY m._src, m._seq) = 1"
        return body, self._params_for(body)

    def _params_for(self, sql: str) -> dict[str, Any]:
        """The parameters ``sql`` uses (DuckDB refuses unused ones)."""
        return {k: v for k, v in self.params.items() if re.search(rf"\${re.escape(k)}\b", sql)}


def _unique_keys(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Pairs with duplicate keys merged (the first non-null value wins)."""
    merged: dict[str, list[str]] = {}
    for key, expr in pairs:
        merged.setdefault(key, []).append(expr)
    return [(k, v[0] if len(v) == 1 else f"coalesce({', '.join(v)})") for k, v in merged.items()]
