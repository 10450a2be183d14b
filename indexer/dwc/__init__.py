"""Darwin Core values in one vocabulary: what publishers write, mapped to one canonical value each.

- :func:`canonical_basis`: ``basisOfRecord`` -> a Darwin Core class name (``PreservedSpecimen``);
- :func:`canonical_license`, :func:`license_url`: licences -> SPDX ids (``CC-BY-NC-4.0``) and their pages;
- :func:`resolve_country`, :func:`normalise_pair`: country names and codes -> ISO 3166-1 (``pycountry``);
- :func:`canonical_rank`, :func:`parse_names`: ``taxonRank`` and scientific names (``gbif-name-parser``);
- :func:`derive_taxon`: a record's name columns made consistent with its name and rank;
- :func:`fold`, :data:`FOLD_MACRO`: case- and accent-blind text, the same in Python and DuckDB;
- :func:`normalise_query`: all of it over many rows at once, in DuckDB, the originals kept.

Used by the build (every scanned row) and by readers (rows of collections built before the
normalisation existed), and by the filters, so that a value typed in either spelling finds both.
"""

from indexer.dwc.basis import BASIS_OF_RECORD, canonical_basis
from indexer.dwc.countries import Country, normalise_pair, resolve_country
from indexer.dwc.fold import FOLD_MACRO, fold, fold_sql, install_fold
from indexer.dwc.licenses import canonical_license, license_url
from indexer.dwc.names import ParsedName, canonical_rank, parse_names
from indexer.dwc.normalise import LIFTED_COLUMNS, Normalised, lift_from_extra, normalise_query
from indexer.dwc.taxa import derive_taxon

__all__ = [
    "BASIS_OF_RECORD",
    "canonical_basis",
    "canonical_license",
    "license_url",
    "Country",
    "resolve_country",
    "normalise_pair",
    "canonical_rank",
    "parse_names",
    "ParsedName",
    "derive_taxon",
    "fold",
    "fold_sql",
    "FOLD_MACRO",
    "install_fold",
    "normalise_query",
    "lift_from_extra",
    "LIFTED_COLUMNS",
    "Normalised",
]
