"""The ANN index layer: FAISS index choice, build, tuning to a recall target, (filtered) search, save/load.

Contracts
---------
* Vectors are rows of shape (n, d), float32 or float16 (a ``np.memmap`` is fine), L2-normalised.
  Similarity is the inner product (= cosine); every score returned is an inner product, higher is better.
* Every vector carries a stable int64 id chosen by the caller (not necessarily contiguous); every search
  returns those ids. Rows with fewer than k results are padded with id -1 and score -inf.
* The index is derived data. :func:`build_index` makes it from stored vectors; :meth:`AnnIndex.save`
  writes it atomically with an :class:`IndexInfo` JSON sidecar (``PATH.json``); :meth:`AnnIndex.load`
  reads both back, memory-mapped on request. :func:`update_index` keeps a collection's index in line
  with its stored vectors.
* :func:`exact_search` is brute force and the ground truth that tests, tuning and benchmarks compare with.
* Queries have kinds (``QUERY_KINDS``: image, text, mixed). Search parameters are tuned and stored
  per kind (``IndexInfo.kinds``), and :meth:`AnnIndex.search` takes the kind of its queries: text
  queries sit far from every image (CLIP's modality gap) and need their own parameters.

Modules: ``choice`` (which index for n, d and a memory budget), ``layout`` (the pieces of a FAISS
index; making one), ``build`` (train, add, tune), ``params`` (each index type's search parameters
and a query's cost), ``tuning_set`` (tuning queries per kind and their exact results), ``tuning``
(parameters per kind to a recall target), ``text_queries`` (a collection's text tuning queries,
embedded once and cached), ``testbed`` (vectors with a modality gap, for tests and benchmarks),
``search`` (the unfiltered and filtered search policy), ``index`` (:class:`AnnIndex`), ``io``
(save/load), ``exact`` (ground truth), ``maintenance`` (a collection's index kept up to date).
FAISS is imported lazily: importing this package stays cheap. Measured latency and recall per index
type are in the README's benchmark section (``bench/search.py``).
"""

from indexer.ann.build import build_index
from indexer.ann.choice import DEFAULT_MEMORY_BUDGET, choose_index, fits_incremental
from indexer.ann.exact import exact_search, recall_at_k
from indexer.ann.index import AnnIndex
from indexer.ann.info import QUERY_KINDS, IndexInfo, kind_summary
from indexer.ann.maintenance import index_path, update_index
from indexer.ann.tuning_inputs import TuningInputs
from indexer.ann.tuning_set import KindQueries
from indexer.errors import AnnError, AnnUnsupportedError, EmptyTuningSetError, TuningSetError
from indexer.store.vectors import VectorLookup

__all__ = [
    "AnnError",
    "AnnUnsupportedError",
    "EmptyTuningSetError",
    "TuningSetError",
    "KindQueries",
    "TuningInputs",
    "QUERY_KINDS",
    "kind_summary",
    "AnnIndex",
    "IndexInfo",
    "VectorLookup",
    "choose_index",
    "build_index",
    "exact_search",
    "recall_at_k",
    "fits_incremental",
    "update_index",
    "index_path",
    "DEFAULT_MEMORY_BUDGET",
]
