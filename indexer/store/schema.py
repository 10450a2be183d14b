"""The metadata schema of a collection: one row per image, Darwin Core names where they apply.

Every source (folder + labels CSV, manifest, Darwin Core Archive, tar shards) maps what it reads
onto these columns; anything else it knows about an image goes, as a JSON object, into ``extra``.
Column names are case-sensitive Darwin Core terms; ``class`` and ``order`` are SQL keywords, so
every SQL statement quotes identifiers (see :func:`quote_ident`).

The build normalises the Darwin Core values (:mod:`indexer.dwc`): ``basisOfRecord``, ``license``,
``country`` / ``countryCode``, ``taxonRank`` and the name columns hold one spelling per value, and
``verbatim`` (a JSON object) keeps what the publisher wrote for every column that was changed or
filled (``null``: the publisher gave nothing). ``meta_version`` says which version of that
normalisation a row went through (null: a row written before it existed, normalised when read),
and each column of :data:`FOLDED_COLUMNS` has a hidden twin holding its case- and accent-folded
text (null where that is just ``lower()``), for filters that ignore case and accents.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from indexer.dwc.fold import FOLDED_COLUMNS
from indexer.dwc.normalise import META_VERSION

__all__ = [
    "SYSTEM_COLUMNS",
    "FOLDED_COLUMNS",
    "DERIVED_COLUMNS",
    "HIDDEN_COLUMNS",
    "META_VERSION",
    "SOURCE_COLUMNS",
    "DWC_COLUMNS",
    "METADATA_COLUMNS",
    "ALL_COLUMNS",
    "RANK_COLUMNS",
    "RANKS",
    "COLUMN_TYPES",
    "DWC_TERM_LOOKUP",
    "canonical_column",
    "quote_ident",
    "sql_string_list",
    "arrow_schema",
]

#: Columns the indexer fills in itself.
SYSTEM_COLUMNS: Final[tuple[str, ...]] = (
    "id",  # stable integer id, shared by FAISS and the metadata
    "key",  # identity of the image within the collection (absolute path, URL, tar member, ...)
    "source",  # the SOURCE argument (or its label) the image came from
    "location",  # where the bytes are read from: absolute local path, http(s) URL, or tar member
    "size",  # bytes of the file (local files), for change detection
    "mtime",  # modification time, seconds since the epoch (local files)
    "sha256",  # hex digest of the file's bytes
    "width",  # pixel size of the original image
    "height",
    "meta_hash",  # digest of the metadata columns, to notice edited labels without re-encoding
    "indexed_at",  # when this row was committed (UTC)
)

#: Columns a source fills in for every item (besides metadata).
SOURCE_COLUMNS: Final[tuple[str, ...]] = ("key", "location", "size", "mtime")

#: The seven Linnaean ranks in order, as column names.
RANK_COLUMNS: Final[tuple[str, ...]] = (
    "kingdom",
    "phylum",
    "class",
    "order",
    "family",
    "genus",
    "specificEpithet",
)

#: The order of the rows of the table a search process serves (``indexer.search.state``): by
#: taxonomy, so that the rows of one taxon are a few row groups (a filter on a rank skips the others
#: by their min/max, and repeated names compress to runs), then by id.
ROW_ORDER: Final[tuple[str, ...]] = (*RANK_COLUMNS, "scientificName", "id")

#: Darwin Core (and a few media) terms kept as their own columns.
DWC_COLUMNS: Final[tuple[str, ...]] = (
    "recordID",  # the record (specimen/occurrence) the image belongs to; several images may share it
    "occurrenceID",
    "catalogNumber",
    "institutionCode",
    "collectionCode",
    "basisOfRecord",
    "scientificName",
    "taxonRank",
    *RANK_COLUMNS,
    "infraspecificEpithet",
    "superfamily",  # ranks beyond the seven that Darwin Core names (2023)
    "subfamily",
    "tribe",
    "subtribe",
    "vernacularName",
    "typeStatus",
    "eventDate",
    "year",
    "country",
    "countryCode",
    "stateProvince",
    "locality",
    "decimalLatitude",
    "decimalLongitude",
    "recordedBy",
    "identifiedBy",
    "license",
    "rightsHolder",
    "references",
    "mediaURL",  # the published URL of the image (may differ from location, see --media-root)
    "mediaFormat",
)

#: Columns derived from the others (see the module docstring), never given by a source.
DERIVED_COLUMNS: Final[tuple[str, ...]] = ("meta_version", *FOLDED_COLUMNS.values())

#: Everything a source may provide besides the system columns; ``extra`` and ``verbatim`` are JSON
#: objects (text); the derived columns come last.
METADATA_COLUMNS: Final[tuple[str, ...]] = DWC_COLUMNS + ("extra", "verbatim") + DERIVED_COLUMNS

#: Columns no user sees (in hits, field lists or exports).
HIDDEN_COLUMNS: Final[frozenset[str]] = frozenset({"meta_hash", *DERIVED_COLUMNS})

ALL_COLUMNS: Final[tuple[str, ...]] = SYSTEM_COLUMNS + METADATA_COLUMNS

#: Rank names as users say them, parallel to RANK_COLUMNS.
RANKS: Final[tuple[str, ...]] = ("kingdom", "phylum", "class", "order", "family", "genus", "species")

#: DuckDB types; every column not listed is VARCHAR.
COLUMN_TYPES: Final[dict[str, str]] = {
    "id": "BIGINT",
    "size": "BIGINT",
    "mtime": "DOUBLE",
    "width": "INTEGER",
    "height": "INTEGER",
    "indexed_at": "TIMESTAMP",
    "year": "INTEGER",
    "meta_version": "INTEGER",
    "decimalLatitude": "DOUBLE",
    "decimalLongitude": "DOUBLE",
}

#: lower-cased term -> canonical column; accepts a few common spellings besides the DwC term.
DWC_TERM_LOOKUP: Final[dict[str, str]] = {c.lower(): c for c in DWC_COLUMNS}
DWC_TERM_LOOKUP.update(
    {
        "scientific_name": "scientificName",
        "species_name": "scientificName",
        "common_name": "vernacularName",
        "vernacular_name": "vernacularName",
        "catalog_number": "catalogNumber",
        "catalognumber": "catalogNumber",
        "latitude": "decimalLatitude",
        "longitude": "decimalLongitude",
        "lat": "decimalLatitude",
        "lon": "decimalLongitude",
        "species_epithet": "specificEpithet",
        "epithet": "specificEpithet",
        "accessuri": "mediaURL",
        "media_url": "mediaURL",
        "dc:format": "mediaFormat",
        "rights_holder": "rightsHolder",
        "dcterms:license": "license",
        "dcterms:rightsholder": "rightsHolder",
        "dcterms:references": "references",
    }
)

_TERM_URI = re.compile(r"^https?://[^#]*[/#]([^/#]+)$")


def canonical_column(name: str) -> str | None:
    """Map a column header or Darwin Core term URI to a canonical column, or None if it is not one.

    ``http://rs.tdwg.org/dwc/terms/catalogNumber`` -> ``catalogNumber``; ``Scientific_Name`` is
    not a DwC spelling and maps only if listed in DWC_TERM_LOOKUP (``scientific_name`` is).
    """
    raw = name.strip().lstrip("\ufeff")
    m = _TERM_URI.match(raw)
    if m:
        raw = m.group(1)
    return DWC_TERM_LOOKUP.get(raw.lower())


def quote_ident(name: str) -> str:
    """Quote an SQL identifier for DuckDB (``order`` -> ``"order"``)."""
    return '"' + name.replace('"', '""') + '"'


def arrow_schema():
    """The pyarrow schema of a metadata segment (all columns, in order)."""
    import pyarrow as pa

    types = {
        "BIGINT": pa.int64(),
        "DOUBLE": pa.float64(),
        "INTEGER": pa.int32(),
        "TIMESTAMP": pa.timestamp("us"),  # naive UTC
        "VARCHAR": pa.string(),
    }
    return pa.schema([(c, types[COLUMN_TYPES.get(c, "VARCHAR")]) for c in ALL_COLUMNS])


def sql_string_list(values: Sequence[str]) -> str:
    """A DuckDB list literal of strings (``['a', 'it''s']``), for the collection's own file names
    in ``read_parquet([...])``, which takes no bound parameters. Never for user values."""
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"
