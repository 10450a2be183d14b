"""Exports shaped like the real ones, written into a test's folder: a GBIF DWCA download, a GBIF
SIMPLE_CSV download, a Symbiota portal export, museum labels CSVs with each quirk.

Shapes follow the published formats (see /work/notes/research-dwc.md for the sources): a GBIF DWCA
download is a zip of ``occurrence.txt`` (interpreted, with GBIF's enumerations and codes),
``verbatim.txt`` (the publisher's values, declared as an extension with the Occurrence row type),
``multimedia.txt`` (GBIF Simple Multimedia, media licences as published), ``meta.xml``,
``metadata.xml``, ``citations.txt``, ``rights.txt`` and ``dataset/<uuid>.xml``, all tab-separated
without quoting; a SIMPLE_CSV download is a zip of one tab-separated ``<key>.csv`` with GBIF's
simple download columns (no media links); a Symbiota export is a zip of comma-separated,
quoted ``occurrences.csv`` and ``multimedia.csv`` (``coreid``, ``identifier``, ``accessURI``,
``thumbnailAccessURI``, ``goodQualityAccessURI``, ``UsageTerms``, ``WebStatement``, ...).
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

DWC = "http://rs.tdwg.org/dwc/terms/"
DC = "http://purl.org/dc/terms/"
AC = "http://rs.tdwg.org/ac/terms/"
XMP = "http://ns.adobe.com/xap/1.0/rights/"
GBIF = "http://rs.gbif.org/terms/1.0/"
DATASET = "7c2f5b8e-9f4e-4c39-9b5a-2a1e4c3b8d11"


def _term(name: str) -> str:
    if name == "gbifID" or name in ("datasetKey", "publishingOrgKey", "taxonKey", "mediaType", "issue"):
        return GBIF + name
    if name in ("license", "rightsHolder", "references", "modified"):
        return DC + name
    return DWC + name


def _tsv(header: list[str], rows: list[dict]) -> str:
    lines = ["\t".join(header)]
    lines += ["\t".join(str(r.get(h, "") or "") for h in header) for r in rows]
    return "\n".join(lines) + "\n"


def _fields(header: list[str], term=_term) -> str:
    return "".join(f'<field index="{i}" term="{term(h)}"/>' for i, h in enumerate(header))


OCCURRENCE_COLUMNS = [
    "gbifID",
    "datasetKey",
    "occurrenceID",
    "catalogNumber",
    "institutionCode",
    "basisOfRecord",
    "license",
    "rightsHolder",
    "references",
    "countryCode",
    "locality",
    "recordedBy",
    "scientificName",
    "taxonRank",
    "kingdom",
    "phylum",
    "class",
    "order",
    "family",
    "genus",
    "specificEpithet",
    "year",
]
VERBATIM_COLUMNS = ["gbifID", "basisOfRecord", "country", "scientificName", "recordedBy", "license"]
MULTIMEDIA_COLUMNS = ["gbifID", "type", "format", "identifier", "references", "title", "license", "rightsHolder"]


def gbif_dwca_download(
    path: Path, occurrences: list[dict], verbatim: list[dict], multimedia: list[dict], key="0001234-260101120000000"
) -> Path:
    """A GBIF "Darwin Core Archive" occurrence download at ``path`` (a .zip)."""
    core = (
        '<core encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" '
        'ignoreHeaderLines="1" rowType="http://rs.tdwg.org/dwc/terms/Occurrence">'
        f'<files><location>occurrence.txt</location></files><id index="0"/>{_fields(OCCURRENCE_COLUMNS)}</core>'
    )
    ext = (
        '<extension encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" '
        'ignoreHeaderLines="1" rowType="{row}"><files><location>{file}</location></files>'
        '<coreid index="0"/>{fields}</extension>'
    )
    meta = (
        '<?xml version="1.0" encoding="utf-8"?><archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="metadata.xml">'
        + core
        + ext.format(row=GBIF + "Multimedia", file="multimedia.txt", fields=_fields(MULTIMEDIA_COLUMNS))
        + ext.format(row=DWC + "Occurrence", file="verbatim.txt", fields=_fields(VERBATIM_COLUMNS))
        + "</archive>"
    )
    files = {
        "meta.xml": meta,
        "metadata.xml": f'<eml:eml xmlns:eml="eml://ecoinformatics.org/eml-2.1.1" packageId="{key}"/>',
        "occurrence.txt": _tsv(OCCURRENCE_COLUMNS, occurrences),
        "verbatim.txt": _tsv(VERBATIM_COLUMNS, verbatim),
        "multimedia.txt": _tsv(MULTIMEDIA_COLUMNS, multimedia),
        "citations.txt": "When using this dataset please use the following citation: GBIF.org (1 January 2026)\n",
        "rights.txt": f"Dataset: Test herbarium\nRights as supplied: CC_BY_4_0\nKey: {DATASET}\n",
        f"dataset/{DATASET}.xml": '<eml:eml xmlns:eml="eml://ecoinformatics.org/eml-2.1.1"/>',
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


#: GBIF's SIMPLE_CSV columns, in order (gbif/occurrence DownloadTerms.SIMPLE_DOWNLOAD_TERMS).
SIMPLE_COLUMNS = [
    "gbifID",
    "datasetKey",
    "occurrenceID",
    "kingdom",
    "phylum",
    "class",
    "order",
    "family",
    "genus",
    "species",
    "infraspecificEpithet",
    "taxonRank",
    "scientificName",
    "verbatimScientificName",
    "verbatimScientificNameAuthorship",
    "countryCode",
    "locality",
    "stateProvince",
    "occurrenceStatus",
    "individualCount",
    "publishingOrgKey",
    "decimalLatitude",
    "decimalLongitude",
    "coordinateUncertaintyInMeters",
    "coordinatePrecision",
    "elevation",
    "elevationAccuracy",
    "depth",
    "depthAccuracy",
    "eventDate",
    "day",
    "month",
    "year",
    "taxonKey",
    "speciesKey",
    "basisOfRecord",
    "institutionCode",
    "collectionCode",
    "catalogNumber",
    "recordNumber",
    "identifiedBy",
    "dateIdentified",
    "license",
    "rightsHolder",
    "recordedBy",
    "typeStatus",
    "establishmentMeans",
    "lastInterpreted",
    "mediaType",
    "issue",
]


def gbif_simple_csv(path: Path, rows: list[dict], key="0004321-260101120000000") -> Path:
    """A GBIF SIMPLE_CSV download at ``path`` (a .zip of one tab-separated ``<key>.csv``)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{key}.csv", _tsv(SIMPLE_COLUMNS, rows))
    return path


SYMBIOTA_OCCURRENCE = [
    "id",
    "institutionCode",
    "collectionCode",
    "basisOfRecord",
    "occurrenceID",
    "catalogNumber",
    "scientificName",
    "scientificNameAuthorship",
    "taxonRank",
    "kingdom",
    "phylum",
    "class",
    "order",
    "family",
    "recordedBy",
    "country",
    "stateProvince",
    "locality",
    "references",
]
SYMBIOTA_MULTIMEDIA = [
    "coreid",
    "identifier",
    "accessURI",
    "thumbnailAccessURI",
    "goodQualityAccessURI",
    "format",
    "type",
    "subtype",
    "rights",
    "Owner",
    "UsageTerms",
    "WebStatement",
    "creator",
]


def _symbiota_term(name: str) -> str:
    if name in ("identifier", "format", "type", "rights", "creator"):
        return "http://purl.org/dc/terms/" + name
    if name in ("accessURI", "thumbnailAccessURI", "goodQualityAccessURI", "subtype"):
        return AC + name
    if name in ("Owner", "UsageTerms", "WebStatement"):
        return XMP + name
    return _term(name)


def _csv(header: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([r.get(h, "") or "" for h in header])
    return buf.getvalue()


def symbiota_export(path: Path, occurrences: list[dict], multimedia: list[dict]) -> Path:
    """A Symbiota portal's Darwin Core Archive export at ``path`` (a .zip of quoted CSVs)."""
    attrs = 'encoding="UTF-8" fieldsTerminatedBy="," linesTerminatedBy="\\n" fieldsEnclosedBy="&quot;" ignoreHeaderLines="1"'
    # the core's fields start at index 1: column 0 is Symbiota's occid, the id
    core_fields = "".join(f'<field index="{i}" term="{_term(h)}"/>' for i, h in enumerate(SYMBIOTA_OCCURRENCE) if i)
    meta = (
        '<?xml version="1.0" encoding="UTF-8"?><archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="eml.xml">'
        f'<core {attrs} rowType="http://rs.tdwg.org/dwc/terms/Occurrence"><files><location>occurrences.csv</location>'
        f'</files><id index="0"/>{core_fields}</core>'
        f'<extension {attrs} rowType="http://rs.tdwg.org/ac/terms/Multimedia"><files><location>multimedia.csv</location>'
        f'</files><coreid index="0"/>{_fields(SYMBIOTA_MULTIMEDIA, term=_symbiota_term)}</extension></archive>'
    )
    files = {
        "meta.xml": meta,
        "eml.xml": '<eml:eml xmlns:eml="eml://ecoinformatics.org/eml-2.1.1"/>',
        "occurrences.csv": _csv(SYMBIOTA_OCCURRENCE, occurrences),
        "multimedia.csv": _csv(SYMBIOTA_MULTIMEDIA, multimedia),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path
