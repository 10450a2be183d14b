"""The sidebar's filters: each one's URL parameter, the collection column it filters, its label and
kind (re-exported by :mod:`search_ui.state`)."""

from __future__ import annotations

from dataclasses import dataclass

from indexer.store.schema import RANK_COLUMNS, RANKS

__all__ = ["FilterSpec", "FILTERS", "FACET_FIELDS", "MULTI_PARAMS", "FILTER_BY_PARAM", "filter_label", "filter_spec"]


@dataclass(frozen=True)
class FilterSpec:
    """One sidebar filter: its URL parameter, the collection column or filter field, a label, and
    its kind: ``multi`` (a set of values), ``range`` (inclusive numbers) or ``bool``."""

    param: str
    field: str
    label: str
    kind: str = "multi"


_RANK_FILTERS = tuple(
    FilterSpec(rank, "taxon" if rank == "species" else col, rank.capitalize()) for rank, col in zip(RANKS, RANK_COLUMNS)
)
#: Facets over metadata columns (besides the ranks), in sidebar order.
FACET_FIELDS: tuple[FilterSpec, ...] = (
    FilterSpec("institutionCode", "institutionCode", "Institution"),
    FilterSpec("collectionCode", "collectionCode", "Collection code"),
    FilterSpec("country", "country", "Country"),
    FilterSpec("basisOfRecord", "basisOfRecord", "Basis of record"),
    FilterSpec("license", "license", "License"),
)
FILTERS: tuple[FilterSpec, ...] = (
    *_RANK_FILTERS,
    *FACET_FIELDS,
    FilterSpec("year", "year", "Year", "range"),
    FilterSpec("has_coordinates", "has_coordinates", "Coordinates", "bool"),
)
FILTER_BY_PARAM = {f.param: f for f in FILTERS}
MULTI_PARAMS = tuple(f.param for f in FILTERS if f.kind == "multi")


def filter_label(param: str) -> str:
    """The sidebar's label of a filter parameter (``institutionCode`` -> ``Institution``)."""
    spec = FILTER_BY_PARAM.get(param)
    return spec.label if spec is not None else param


def filter_spec(param: str) -> FilterSpec:
    return FILTER_BY_PARAM[param]
