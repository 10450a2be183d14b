"""bioclip-search indexer: sources, the batch pipeline, the on-disk collection and the search engine."""

from indexer._version import __version__

__all__ = ["__version__"]
