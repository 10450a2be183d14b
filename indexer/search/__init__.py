"""The search: query -> results over one collection, with metadata filters.

Public surface::

    from indexer.search import Filter, SearchEngine, Term
    engine = SearchEngine.open("photos.collection")
    result = engine.search("Corvidae", k=10, filters=Filter.from_mapping({"country": "Kenya"}))

Modules: ``engine`` (:class:`SearchEngine`, the facade), ``results`` (:class:`Hit`,
:class:`SearchResult`), ``query`` (weighted terms, grouping rules), ``filters`` and ``filter_sql``
(structured filters and their SQL), ``taxonomy`` (the collection's own taxa), ``understand``
(query text and images to vectors), ``ranking`` (nearest neighbours, pages, groups), ``state`` (the
generation being served), ``catalog`` (counts, facets, ranges, sources, the overview).
"""

from indexer.search.engine import FilterInput, SearchEngine
from indexer.search.filters import Condition, Filter, parse_where
from indexer.search.query import Grouping, Query, Term
from indexer.search.results import Hit, SearchResult
from indexer.search.taxonomy import TaxonMatch, Taxonomy

__all__ = [
    "SearchEngine",
    "SearchResult",
    "Hit",
    "Filter",
    "Condition",
    "parse_where",
    "Term",
    "Query",
    "Grouping",
    "TaxonMatch",
    "Taxonomy",
    "FilterInput",
]
