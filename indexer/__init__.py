"""bioclip-search indexer: sources, the batch pipeline, the on-disk collection and the search engine."""

__version__ = "0.1.0"
