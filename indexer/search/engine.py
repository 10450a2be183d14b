"""The search engine: open a collection and answer text, taxon, image, id, vector and combined queries.

Contracts:

- Scores are cosine similarities (inner products of L2-normalised vectors), highest first.
- Every committed image is searchable: images in segments the ANN index does not cover yet are
  searched exactly and merged in; retired ids never come back.
- Filters (:class:`indexer.search.filters.Filter`) select ids with one DuckDB query over the
  metadata; the selected ids are cached per filter for the generation being served, so paging,
  facet counts and further queries with the same filters cost no SQL. The ANN index searches a
  small selected set exactly (over just its vectors) and a large one with a selector and
  compensated parameters (:meth:`indexer.ann.AnnIndex.search`); the not-yet-indexed part is
  filtered and searched exactly (:mod:`indexer.search.ranking`).
- A query (:class:`indexer.search.query.Query`) is a weighted combination of terms; its vector is
  the normalised weighted sum of the terms' unit vectors (see :mod:`indexer.search.query`). Its
  kind (text, image or mixed) picks the index parameters tuned for that kind of query.
- Readers never block on writers. The engine serves one generation at a time
  (:mod:`indexer.search.state`) and, at most every ``refresh_interval`` seconds, looks for a newer
  one; switching is atomic for queries in flight.
- Thread-safe: one engine serves every session of the app. The model is loaded once, lazily
  (a search CLI that only filters or looks up ids never imports torch). Text embeddings are cached.
- Bad queries raise :class:`QueryError` / :class:`FilterError` with a message for the user; things
  the user should know but that do not stop the search (truncated text, an unknown or ambiguous
  taxon) are ``SearchResult.notices``.
- Everything a front end needs is a public method here: listings, counts, facets, value ranges,
  the sources' folders, the collection overview. No caller touches the served state.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from indexer.ann.info import QUERY_KINDS
from indexer.errors import IndexerError, QueryError
from indexer.search import catalog
from indexer.search.filters import Filter, available_fields
from indexer.search.query import Grouping, Query, Term
from indexer.search.ranking import Page, knn, ranked, recall_applied
from indexer.search.results import Hit, SearchResult
from indexer.search.state import FILTER_CACHE_BYTES, ServedState, StateOptions, _IdCache, load_state
from indexer.search.taxonomy import TaxonMatch, Taxonomy
from indexer.search.understand import MAX_IMAGE_BYTES, ImageInput, QueryEmbedder, interpret
from indexer.store import Collection
from indexer.store.ids import remove, sorted_unique
from indexer.store.querylog import QueryLog
from indexer.store.replacements import Replacement

__all__ = ["SearchEngine", "Hit", "SearchResult", "ImageInput", "FilterInput", "Replacement"]

log = logging.getLogger(__name__)

FilterInput = Any  # a Filter, a mapping (Filter.from_mapping), FIELD=VALUE strings, or None


class SearchEngine:
    """Answers queries over one collection. Create with :meth:`open`.

    ``log_queries`` keeps an opt-in log of query vectors in the collection for tuning its index on
    real queries (:mod:`indexer.store.querylog`): False (default) logs nothing, True or
    ``"vectors"`` the query vectors and kinds only, ``"text"`` their text terms too.
    """

    def __init__(
        self,
        collection: Collection,
        *,
        model: Any = None,
        device: str = "auto",
        refresh_interval: float | None = 1.0,
        mmap_index: bool | None = None,
        filter_cache_bytes: int = FILTER_CACHE_BYTES,
        log_queries: bool | str = False,
        max_image_bytes: int = MAX_IMAGE_BYTES,
    ):
        self.collection = collection
        self._model = model
        self._device = device
        self._model_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self.refresh_interval = refresh_interval
        self._options = StateOptions(mmap_index, int(filter_cache_bytes))
        self._text_encoder: Any = None  # None: not looked for yet; False: none on this machine
        self._embedder = QueryEmbedder(
            lambda: self.model, collection.dimension, max_image_bytes, text_model=lambda: self.text_model
        )
        self._last_check = time.monotonic()
        self._state = load_state(collection, collection.latest_generation_number(), None, self._options)
        self._query_log = _query_log(collection, log_queries)

    @classmethod
    def open(cls, path: str | os.PathLike, **kwargs: Any) -> SearchEngine:
        """Open the collection at ``path``. Raises CollectionNotFoundError / FormatVersionError."""
        return cls(Collection.open(path), **kwargs)

    # -- model --------------------------------------------------------------------------

    @property
    def model(self) -> Any:
        """The collection's model (same source, revision and preprocessing), loaded on first use."""
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    from indexer.store.model import load_collection_model

                    self._model = load_collection_model(self.collection, device=self._device)
        return self._model

    @property
    def text_model(self) -> Any:
        """What encodes query text: the model once this process has it; before that, the model's
        exported text encoder where this machine has one (ONNX Runtime, no torch imported:
        :mod:`bioclip.text_onnx`, the same vectors as the fp32 model); else the model, loaded now."""
        if self._model is not None:
            return self._model
        if self._text_encoder is None:
            with self._model_lock:
                if self._text_encoder is None:
                    from indexer.store.model import open_collection_text_encoder

                    self._text_encoder = open_collection_text_encoder(self.collection) or False
        return self._text_encoder or self.model

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    def load_model(self) -> Any:
        """Load the model now (an app does it in the background, so the first query does not wait)."""
        return self.model

    # -- state --------------------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> bool:
        """Switch to the newest published generation if there is one. Returns True if it switched."""
        self._last_check = time.monotonic()
        number = self.collection.latest_generation_number()
        state = self._state
        if number == state.generation.number and not force:
            return False
        with self._state_lock:
            state = self._state
            if number == state.generation.number and not force:
                return False
            try:
                self._state = load_state(self.collection, number, None if force else state, self._options)
            except IndexerError:
                raise
            except Exception as exc:  # keep serving the old state rather than fail every query
                log.warning(
                    "cannot load generation %d yet (%s); still serving %d", number, exc, state.generation.number
                )
                return False
            log.info("now serving generation %d (%d images)", number, self._state.generation.images)
            return True

    def _served(self) -> ServedState:
        if self.refresh_interval is not None and time.monotonic() - self._last_check >= self.refresh_interval:
            self.refresh()
        return self._state

    @property
    def generation(self) -> int:
        return self._state.generation.number

    @property
    def taxonomy(self) -> Taxonomy:
        return self._served().taxonomy()

    def clear_caches(self) -> None:
        """Forget cached text embeddings and filter selections (benchmarks; memory)."""
        self._embedder.clear()
        self._state.filters = _IdCache(self._options.filter_cache_bytes)

    # -- what the collection holds ----------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Counts, model, index, failures by reason, images and taxa per rank, sources: what
        ``bioclip-index info`` and the app's collection page show."""
        return catalog.overview(self._served(), self.collection)

    def failures(self) -> list[dict[str, Any]]:
        """The images that could not be indexed (key, source, location, stage, reason, detail, failed_at)."""
        return catalog.failures(self._served())

    def fields(self) -> list[tuple[str, str]]:
        """(name, type) of every field a filter may use in this collection."""
        return available_fields(self._served().generation.extra_keys)

    def count(self, filters: FilterInput = None) -> int:
        """How many images pass ``filters`` (all images without)."""
        flt = Filter.coerce(filters)
        if not flt:
            return int(self._served().generation.images)
        return int(self.selected_ids(flt).size)

    def selected_ids(self, filters: FilterInput) -> np.ndarray:
        """The ids of the images passing ``filters``: sorted, read-only, cached per filter for the
        generation being served."""
        ids, _ = self._served().allowed(Filter.coerce(filters))
        return ids

    def facet(self, column: str, filters: FilterInput = None, limit: int = 50) -> list[tuple[Any, int]]:
        """(value, images) of a metadata column among the images passing ``filters``, most first."""
        return catalog.facet(self._served(), column, Filter.coerce(filters), limit)

    def value_range(self, column: str, filters: FilterInput = None) -> tuple[Any, Any] | None:
        """(smallest, largest) value of a metadata column among the images passing ``filters``
        (``year``: the years the sidebar's slider spans); None when no image has a value."""
        return catalog.value_range(self._served(), column, Filter.coerce(filters))

    def export(
        self, out: str | os.PathLike, *, fmt: str = "parquet", filters: FilterInput = None, shard_rows: int = 500_000
    ) -> Any:
        """Write the vectors and key metadata of the images passing ``filters`` (all without) to the
        folder ``out`` as Parquet or clip-retrieval's npy layout (see :mod:`indexer.search.export`)."""
        from indexer.search.export import export_state

        state = self._served()
        flt = Filter.coerce(filters)
        if flt:
            ids = state.allowed(flt)[0]
        else:
            ids = np.asarray(state.cursor().execute("SELECT id FROM images ORDER BY id").fetchnumpy()["id"], np.int64)
        return export_state(state, ids, out, fmt=fmt, shard_rows=shard_rows)

    def source_roots(self) -> dict[str, tuple[str, ...]]:
        """The folder(s) each source's local files live in: the only places its images may be served
        from (see :func:`indexer.search.catalog.source_roots`)."""
        return catalog.source_roots(self._served(), self.collection)

    # -- lookups ------------------------------------------------------------------------

    def get(self, ids: Sequence[int]) -> list[Hit]:
        """Hits (score 0) for the given ids, in order; ids that are not live are left out."""
        meta = self._served().metadata([int(i) for i in ids])
        return [Hit(int(i), 0.0, meta[int(i)]["location"], meta[int(i)]) for i in ids if int(i) in meta]

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """float32 (len(ids), d) stored vectors of ``ids``, in order. Raises KeyError for an id the
        collection never held."""
        return self._served().vectors(np.asarray(ids, dtype=np.int64))

    def replacement(self, image_id: int) -> Replacement | None:
        """What became of a retired id: the image that replaced it (``new_id``, None when nothing
        did) and why, with ``describe()`` for the user ("image 42 was replaced by 97 (its file
        changed)"). None when ``image_id`` is live or was never an id of this collection."""
        return self._served().replacement(int(image_id))

    def records_of(self, hit: Hit, limit: int = 50) -> list[Hit]:
        """Other images of the same specimen/record (same recordID, else same occurrenceID / catalogNumber)."""
        return self.get(catalog.record_ids(self._served(), hit.metadata, hit.id, limit))

    def resolve_taxon(self, text: str) -> list[TaxonMatch]:
        return self._served().taxonomy().resolve(text)

    def embed_image(self, image: ImageInput) -> np.ndarray:
        """Embed a query image (path, bytes or PIL image) with the collection's preprocessing: (1, d)."""
        return self._embedder.embed_image(image)

    # -- queries ------------------------------------------------------------------------

    def search(
        self,
        text: str | Query | Term | None = None,
        *,
        query: Query | Term | None = None,
        image: ImageInput | None = None,
        image_id: int | None = None,
        vector: np.ndarray | None = None,
        k: int = 10,
        offset: int = 0,
        filters: FilterInput = None,
        min_score: float | None = None,
        label: str | None = None,
        group: Grouping | bool | str | float | None = None,
        kind: str | None = None,
    ) -> SearchResult:
        """Answer one query: exactly one of ``text`` (words or a taxon name; a :class:`Query` is
        accepted here too), ``query`` (a weighted combination, see :mod:`indexer.search.query`),
        ``image`` (path, bytes or PIL image), ``image_id`` (more like an indexed image, which is left
        out of the results) or ``vector``.

        ``k`` hits after skipping ``offset`` (paging); ``filters``: a :class:`Filter`, a mapping
        (``{"country": "Kenya", "year": (None, 1950)}``) or ``--where`` strings; ``min_score``:
        leave out hits scoring below it; ``group``: fold near-duplicates (see
        :class:`indexer.search.query.Grouping`; ``True`` = same record). ``label`` words the
        interpretation of a vector query (e.g. "images like the uploaded photo"). ``kind`` overrides
        the query's kind (``image``, ``text``, ``mixed``; by default :attr:`Query.kind`), which picks
        the index parameters tuned for it: a ``vector`` that is a text embedding is a text query.

        Raises QueryError (or FilterError) with a message for the user on a bad query.
        """
        t0 = time.perf_counter()
        given = sum(x is not None for x in (text, query, image, image_id, vector))
        if given != 1:
            raise QueryError("give exactly one of: text, a query, an image, an image id, a vector")
        k, offset = _check_int(k, "k", 1), _check_int(offset, "offset", 0)
        min_score = _check_score(min_score)
        grouping = Grouping.coerce(group)
        flt = Filter.coerce(filters)
        q = _as_query(text, query, image, image_id, vector, label)
        q.validate()
        kind = _check_kind(kind or q.kind)
        state = self._served()
        timings: dict[str, float] = {}

        t = time.perf_counter()
        qvec, parts, notices = self._embedder.embed(state, q)
        timings["embed"] = (time.perf_counter() - t) * 1000
        interpretation = interpret(q, parts, label)
        if self._query_log is not None:
            words = [(t.kind, t.weight, t.value if t.kind in ("text", "taxon") else None) for t in q.terms]
            self._query_log.append(qvec, kind, words)

        allowed = None
        candidates = None
        if flt:
            t = time.perf_counter()
            allowed, more = state.allowed(flt)
            timings["filter"] = (time.perf_counter() - t) * 1000
            notices += more
            candidates = int(allowed.size)
            interpretation += f", where {flt.describe()}"
        if grouping is not None:
            interpretation += f", {grouping.describe()}"
        excluded = [*q.excluded_ids, *(p.image_id for p in parts if p.image_id is not None)]
        exclude = np.unique(np.asarray(excluded, dtype=np.int64)) if excluded else None

        n_images = int(state.generation.images)
        hits: list[Hit]
        if offset >= n_images:  # nothing there; and k + offset never sizes a search beyond the collection
            hits, has_more = [], False
            if n_images:
                notices.append(f"offset {offset:,} is past the end: the collection has {n_images:,} images")
        else:
            page = Page(qvec, min(k, n_images - offset), offset, allowed, exclude, min_score, grouping, kind=kind)
            hits, has_more = ranked(state, page, timings)
        if not hits:
            if flt and candidates == 0:
                notices.append("no image matches the filters")
            elif min_score is not None and offset == 0:
                notices.append(f"no image scores {min_score:g} or more")
        prompts = [p.prompt for p in parts if p.prompt]
        taxa = [p.taxon for p in parts if p.taxon is not None]
        return SearchResult(
            hits=hits,
            interpretation=interpretation,
            notices=list(dict.fromkeys(notices)),
            candidates=candidates,
            generation=state.generation.number,
            elapsed_ms=(time.perf_counter() - t0) * 1000,
            prompt=prompts[0] if prompts else None,
            taxon=taxa[0] if taxa else None,
            query_vector=qvec,
            prompts=prompts,
            alternatives=[a for p in parts for a in p.alternatives],
            has_more=has_more,
            timings=timings,
            kind=kind,
            recall=recall_applied(state, kind),
            offset=offset,
            k=k,
        )

    def browse(self, filters: FilterInput = None, *, k: int = 50, offset: int = 0) -> SearchResult:
        """The images passing ``filters`` (all, without), in id order, with score 0: listing, not
        ranking. ``candidates`` is how many pass in all (the pages to come included). There is no
        query, so the result's ``kind`` and ``recall`` are None."""
        t0 = time.perf_counter()
        k, offset = _check_int(k, "k", 1), _check_int(offset, "offset", 0)
        state = self._served()
        flt = Filter.coerce(filters)
        ids, total, notices = catalog.listing_ids(state, flt, k, offset)
        meta = state.metadata(ids)
        hits = [Hit(i, 0.0, meta[i]["location"], meta[i]) for i in ids if i in meta]
        if flt and total == 0:
            notices = [*notices, "no image matches the filters"]
        return SearchResult(
            hits=hits,
            interpretation="all images" + (f" where {flt.describe()}" if flt else ""),
            notices=list(notices),
            candidates=total,
            generation=state.generation.number,
            elapsed_ms=(time.perf_counter() - t0) * 1000,
            has_more=offset + k < total,
            offset=offset,
            k=k,
        )

    def similar(self, image_id: int, **kwargs: Any) -> SearchResult:
        """More like this: images nearest to an indexed image, excluding the image itself."""
        return self.search(image_id=image_id, **kwargs)

    def knn(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed_ids: np.ndarray | None = None,
        exclude_ids: np.ndarray | None = None,
        kind: str = "image",
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k nearest live images for each query row (m, d), merged over the
        ANN index and the not-yet-indexed segments; rows padded with (-inf, -1).

        ``allowed_ids``: only these ids may be returned (any order, retired ids are ignored);
        ``exclude_ids``: these never are; ``kind``: what the query rows are (image, text or mixed
        vectors), for the index parameters tuned for them."""
        state = self._served()
        allowed = None
        if allowed_ids is not None:
            allowed = sorted_unique(allowed_ids)
            if state.deleted.size:
                allowed = remove(allowed, state.deleted)
        exclude = None if exclude_ids is None or not len(exclude_ids) else sorted_unique(exclude_ids)
        return knn(state, queries, k, allowed, exclude, _check_kind(kind))

    def query_vector(self, text: Any = None, *, query: Any = None, image: Any = None, image_id: Any = None):
        """(unit vector (d,) float32, kind) of a query as :meth:`search` would search it (the same
        understanding of text and taxon names, the same weighting), without searching: for
        judging results against exact search, or tuning on a set of queries."""
        q = _as_query(text, query, image, image_id, None, None)
        q.validate()
        qvec = self._embedder.embed(self._served(), q)[0]
        return np.asarray(qvec, dtype=np.float32).reshape(-1), q.kind


# -- helpers ------------------------------------------------------------------------------


def _as_query(text: Any, query: Any, image: Any, image_id: Any, vector: Any, label: str | None) -> Query:
    if isinstance(text, Query | Term):
        return Query.coerce(text)
    if query is not None:
        return Query.coerce(query)
    if text is not None:
        if not isinstance(text, str):
            raise QueryError(f"the search text must be a string, not {type(text).__name__}")
        return Query((Term.text(text),))
    if image is not None:
        return Query((Term("image", image),))
    if image_id is not None:
        return Query((Term.id(image_id),))
    return Query((Term.vector(vector, label=label),))


def _check_kind(kind: str) -> str:
    if kind not in QUERY_KINDS:
        raise QueryError(f"unknown query kind {kind!r}; use one of {', '.join(QUERY_KINDS)}")
    return kind


def _query_log(collection: Collection, setting: bool | str) -> QueryLog | None:
    """The engine's query log for ``log_queries`` (see :class:`SearchEngine`), or None when off."""
    if setting in (False, None, "", "off", "none"):
        return None
    if setting not in (True, "vectors", "text"):
        raise QueryError(f"log_queries is off, vectors or text, not {setting!r}")
    return QueryLog(collection.path, collection.dimension, text=setting == "text")


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise QueryError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise QueryError(f"{name} must be at least {minimum}" if minimum else f"{name} must not be negative")
    return int(value)


def _check_score(min_score: Any) -> float | None:
    if min_score is None:
        return None
    try:
        score = float(min_score)
    except (TypeError, ValueError):
        raise QueryError(f"the minimum score must be a number, got {min_score!r}") from None
    if not math.isfinite(score):
        raise QueryError("the minimum score must be a finite number")
    return score
