"""Embeddings in: precomputed vectors (and their metadata) -> a collection, with a declared model.

Public surface::

    from indexer.build.importers import DeclaredModel, ImportOptions, import_embeddings
    report = import_embeddings("tol.collection", ["emb/*.parquet"], model=DeclaredModel("bioclip-2"))

Modules: ``runner`` (:func:`import_embeddings`), ``options`` (:class:`ImportOptions`,
:class:`ImportReport`), ``target`` (the collection and its declared model, locked), ``detect``
(which kind of files), ``readers`` (Parquet; the reader contract), ``vectors`` (checks and
normalisation), ``mapping`` (metadata columns as labels CSVs map them; locations), ``batch``
(one batch compared with the collection and buffered). See docs/ARCHITECTURE.md.
"""

from indexer.build.importers.detect import detect_kind, open_reader
from indexer.build.importers.options import ImportOptions, ImportReport
from indexer.build.importers.readers import ImportColumns
from indexer.build.importers.runner import import_embeddings
from indexer.build.importers.target import DeclaredModel

__all__ = [
    "DeclaredModel",
    "ImportColumns",
    "ImportOptions",
    "ImportReport",
    "detect_kind",
    "import_embeddings",
    "open_reader",
]
