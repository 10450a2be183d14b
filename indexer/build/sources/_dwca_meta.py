"""The descriptor of a Darwin Core Archive: meta.xml (core, extensions, fields, defaults, separators, encodings), or one inferred for a folder or single CSV of Darwin Core columns."""

from __future__ import annotations

import dataclasses
import logging
import posixpath
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, cast

from indexer.build.sources._archive import ArchiveFiles
from indexer.build.sources._common import (
    connect,
    duckdb_message,
)
from indexer.errors import SourceError
from indexer.store.schema import canonical_column

log = logging.getLogger("indexer.build.sources.dwca")


_MEDIA_ROW_TYPES = {
    "http://rs.gbif.org/terms/1.0/multimedia": "multimedia",
    "http://rs.gbif.org/terms/1.0/image": "multimedia",  # GBIF's older Simple Images extension
    "http://rs.tdwg.org/ac/terms/multimedia": "audubon",
    "http://eol.org/schema/media/document": "eol",
}


_OCCURRENCE = "occurrence"


#: Cores whose records are not occurrences: an Occurrence extension then supplies those.
_NON_RECORD_CORES = {"taxon", "event"}


_METADATA_FILES = {"eml.xml", "metadata.xml"}


def _local_name(term: str) -> str:
    term = term.strip()
    return re.split(r"[/#:]", term.rstrip("/#"))[-1] or term


def _row_kind(row_type: str) -> str:
    return _local_name(row_type).lower()


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
    #: made from a data file's header (no meta.xml)
    inferred: bool = False

    @property
    def is_gbif_simple_csv(self) -> bool:
        """A GBIF SIMPLE_CSV download: one inferred table with GBIF's own columns (gbifID,
        datasetKey) and nothing that links to media (no associatedMedia, identifier, accessURI)."""
        if not self.inferred or self.extensions:
            return False
        names = {f.name.lower() for f in self.core.fields}
        return {"gbifid", "datasetkey"} <= names and not names & {"associatedmedia", "identifier", "accessuri"}


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

    encoding, warnings = "UTF-8", cast(tuple[str, ...], ())
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
    return Descriptor(core=spec, warnings=warnings, inferred=True)
