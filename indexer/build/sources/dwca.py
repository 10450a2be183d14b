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

import logging
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from indexer.build.sources._archive import ArchiveFiles
from indexer.build.sources._common import (
    BATCH_ROWS,
    connect,
    fill_locations,
    guard_reader,
    path_to_text,
    rebatch,
)
from indexer.build.sources._dwca_meta import (
    Descriptor,
    Field,
    FileSpec,
    _find_descriptor,
    _looks_like_text_table,
    _simple_descriptor,
    parse_meta_xml,
)
from indexer.build.sources._dwca_plan import PlanOptions, _Plan
from indexer.errors import SourceError

__all__ = ["DwcaSource", "Descriptor", "FileSpec", "Field", "parse_meta_xml"]

log = logging.getLogger(__name__)

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

    What a publisher's archive means, kept as such: an image's ``license`` is its media row's own
    (a meta.xml default for the media extension counts as its own); the record's licence is kept as
    ``record:license`` in ``extra``, and fills in for images without one only with
    ``record_license`` (``--license-from-record``: the operator says the record's licence covers its
    images; those images then say ``licenseFrom: record``). In a GBIF download, ``verbatim.txt``
    (the publisher's values) fills ``verbatim`` where it differs from the interpreted
    ``occurrence.txt``, and a record without ``references`` links to its GBIF occurrence page
    (``https://www.gbif.org/occurrence/{gbifID}``). An Audubon Core media row's
    ``goodQualityAccessURI`` and ``thumbnailAccessURI`` are its ``alt_locations``, tried when
    ``accessURI`` fails. A GBIF SIMPLE_CSV download (no media links at all) is said to be one.
    """

    def __init__(self, path: str | os.PathLike, *, name: str | None = None, record_license: bool = False):
        self.path = os.path.abspath(os.fspath(path))
        if not os.path.exists(self.path):
            raise SourceError(f"Darwin Core Archive not found: {self.path}", self.path)
        self.name = name or path_to_text(self.path)
        self.record_license = record_license
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
            if descriptor.is_gbif_simple_csv:
                report["gbif_simple_csv"] = True
            con = connect()
            try:
                options = PlanOptions(self.name, self.record_license)
                query, params = _Plan(con, files, base, descriptor, report, options).build()
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
        if r.get("gbif_simple_csv"):
            message = (
                f"a GBIF SIMPLE_CSV download: its {r['records']} occurrences have no media links, so there are "
                "no images to index; download the same query from GBIF as a Darwin Core Archive (with multimedia.txt)"
            )
            log.info("%s is %s", self.name, message)  # the build's summary says it
            r["empty_because"] = message
        elif not r["image_rows"] and not r["error_rows"]:
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
