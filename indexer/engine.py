"""The search engine: open a collection and answer text, taxon, image, id, vector and combined queries.

Contracts:

- Scores are cosine similarities (inner products of L2-normalised vectors), highest first.
- Every committed image is searchable: images in segments the ANN index does not cover yet are
  searched exactly and merged in; retired ids never come back.
- Filters (:class:`indexer.filters.Filter`) select ids with one DuckDB query over the metadata; the
  selected ids are cached per filter for the generation being served, so paging, facet counts and
  further queries with the same filters cost no SQL. The ANN index searches a small selected set
  exactly (over just its vectors) and a large one with a selector and compensated parameters
  (:meth:`indexer.ann.AnnIndex.search`); the not-yet-indexed part is filtered and searched exactly here.
- A query (:class:`indexer.query.Query`) is a weighted combination of terms; its vector is the
  normalised weighted sum of the terms' unit vectors (see :mod:`indexer.query` for the maths).
- Readers never block on writers. The engine serves one generation at a time and, at most every
  ``refresh_interval`` seconds, looks for a newer one; switching is atomic for queries in flight.
- Thread-safe: one engine serves every session of the app. The model is loaded once, lazily
  (a search CLI that only filters or looks up ids never imports torch). Text embeddings are cached
  (the app searches the same text again for its facet counts and pages).
- Bad queries raise :class:`QueryError` / :class:`FilterError` with a message for the user; things
  the user should know but that do not stop the search (truncated text, an unknown or ambiguous
  taxon) are ``SearchResult.notices``.
"""

from __future__ import annotations

import io
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import FilterError, IndexerError, QueryError
from indexer.filters import Filter
from indexer.locations import kind_sql, local_path, safe_local_path
from indexer.query import EmbeddedTerm, Grouping, Query, Term, combine, record_key
from indexer.store import Collection, Snapshot
from indexer.store.ids import member, remove, sorted_unique
from indexer.store.schema import ALL_COLUMNS, RANKS, quote_ident
from indexer.taxonomy import TaxonMatch, Taxonomy, looks_like_scientific_name

__all__ = ["Hit", "SearchResult", "SearchEngine", "ImageInput", "FilterInput"]

log = logging.getLogger(__name__)

ImageInput = Any  # a path (str / Path), bytes, or a PIL image
FilterInput = Any  # a Filter, a mapping (Filter.from_mapping), FIELD=VALUE strings, or None

_HIDDEN = {"meta_hash"}
#: Bytes of selected-id arrays kept per generation (8 bytes per id: 1M ids = 8 MiB).
FILTER_CACHE_BYTES = 256 << 20
#: Text embeddings kept (prompt -> vector).
TEXT_CACHE_SIZE = 1024


@dataclass(frozen=True)
class Hit:
    """One result: the image's id, similarity score, where its bytes are, and its metadata.

    With grouping (see :class:`indexer.query.Grouping`), ``group`` holds the other hits of this
    hit's group, best first (empty otherwise)."""

    id: int
    score: float
    location: str
    metadata: dict[str, Any]
    group: tuple[Hit, ...] = field(default=(), compare=False)

    def get(self, name: str, default: Any = None) -> Any:
        v = self.metadata.get(name)
        return default if v is None else v

    @property
    def scientific_name(self) -> str | None:
        return self.get("scientificName") or _binomial(self.metadata)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: id, score, location, then every non-empty metadata field (and ``group``:
        the other members' id, score and location, when grouped)."""
        out: dict[str, Any] = {"id": self.id, "score": round(float(self.score), 6), "location": self.location}
        for k, v in self.metadata.items():
            if v is None or k in ("id", "location") or k in _HIDDEN:
                continue
            out[k] = v.isoformat() if hasattr(v, "isoformat") else v
        if self.group:
            out["group"] = [{"id": g.id, "score": round(float(g.score), 6), "location": g.location} for g in self.group]
        return out


@dataclass
class SearchResult:
    """Hits plus how the query was understood and anything the user should know."""

    hits: list[Hit]
    interpretation: str = ""
    notices: list[str] = field(default_factory=list)
    candidates: int | None = None  # images passing the filters (None: no filter)
    generation: int = 0
    elapsed_ms: float = 0.0
    prompt: str | None = None  # the (first) text sent to the model, when there was text
    taxon: TaxonMatch | None = None  # the (first) taxon the query was understood as
    query_vector: np.ndarray | None = None  # (1, d) float32, to reuse (facets, paging) without re-encoding
    prompts: list[str] = field(default_factory=list)  # every text sent to the model
    alternatives: list[TaxonMatch] = field(default_factory=list)  # other taxa an ambiguous name names
    has_more: bool = False  # a further page (offset + k) has results
    timings: dict[str, float] = field(default_factory=dict)  # ms: embed, filter, search, metadata

    def to_dict(self) -> dict[str, Any]:
        return {
            "interpretation": self.interpretation,
            "notices": list(self.notices),
            "candidates": self.candidates,
            "generation": self.generation,
            "prompts": list(self.prompts),
            "alternatives": [m.describe() for m in self.alternatives],
            "has_more": self.has_more,
            "hits": [h.to_dict() for h in self.hits],
        }


def _binomial(meta: dict) -> str | None:
    g, s = meta.get("genus"), meta.get("specificEpithet")
    if g and s:
        return f"{g} {s}"
    return None


class _IdCache:
    """LRU of Filter -> (sorted, read-only id array, notices), bounded by the arrays' bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[Filter, tuple[np.ndarray, list[str]]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Filter) -> tuple[np.ndarray, list[str]] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: Filter, ids: np.ndarray, notices: list[str]) -> None:
        if ids.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = (ids, notices)
            self._bytes += ids.nbytes
            while self._bytes > self.max_bytes and self._items:
                _, (old, _) = self._items.popitem(last=False)
                self._bytes -= old.nbytes


class _State:
    """Everything needed to answer queries against one generation. Never mutated once published
    (the caches fill in, but they only ever hold what this generation's data determines)."""

    def __init__(
        self,
        snapshot: Snapshot,
        con,
        index,
        index_path: str | None,
        covers: set[int],
        delta_ids,
        delta_vecs,
        deleted,
        filter_cache_bytes: int,
    ):
        self.snapshot = snapshot
        self.con = con
        self.index = index
        self.index_path = index_path
        self.covers = covers
        self.delta_ids = delta_ids
        self.delta_vecs = delta_vecs
        self.deleted = deleted  # sorted unique int64
        self.segments = {s.n for s in snapshot.generation.segments}
        self.delete_files = set(snapshot.generation.deletes)
        self.filters = _IdCache(filter_cache_bytes)
        self.index_excluded = self._index_excluded()
        self._taxonomy: Taxonomy | None = None
        self._lock = threading.Lock()

    def _index_excluded(self) -> np.ndarray | None:
        """Retired ids the ANN index may still hold (None: none). An index that removes retired ids
        and has seen every retirement holds none, so unfiltered searches need no selector."""
        if self.index is None or not self.deleted.size:
            return None
        entry = self.snapshot.generation.index or {}
        if entry.get("removes_deleted") and int(entry.get("deleted_seen", -1)) == int(self.deleted.size):
            return None
        return self.deleted

    @property
    def generation(self):
        return self.snapshot.generation

    def cursor(self):
        return self.con.cursor()

    def taxonomy(self) -> Taxonomy:
        with self._lock:
            if self._taxonomy is None:
                self._taxonomy = Taxonomy.from_connection(self.cursor())
            return self._taxonomy

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """float32 (len(ids), d) stored vectors of ``ids``, in order (see Snapshot.get_vectors)."""
        return self.snapshot.get_vectors(ids)

    def is_retired(self, image_id: int) -> bool:
        if not self.deleted.size:
            return False
        i = int(np.searchsorted(self.deleted, image_id))
        return i < self.deleted.size and int(self.deleted[i]) == image_id


class SearchEngine:
    """Answers queries over one collection. Create with :meth:`open`."""

    def __init__(
        self,
        collection: Collection,
        *,
        model: Any = None,
        device: str = "auto",
        refresh_interval: float | None = 1.0,
        mmap_index: bool | None = None,
        filter_cache_bytes: int = FILTER_CACHE_BYTES,
    ):
        self.collection = collection
        self._model = model
        self._device = device
        self._model_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self.refresh_interval = refresh_interval
        self._mmap_index = mmap_index
        self._filter_cache_bytes = int(filter_cache_bytes)
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._text_lock = threading.Lock()
        self._last_check = time.monotonic()
        self._state = self._load_state(collection.latest_generation_number(), None)

    @classmethod
    def open(cls, path: str | os.PathLike, **kwargs) -> SearchEngine:
        """Open the collection at ``path``. Raises CollectionNotFoundError / FormatVersionError."""
        return cls(Collection.open(path), **kwargs)

    # -- model --------------------------------------------------------------------------

    @property
    def model(self):
        """The collection's model (same source, revision and preprocessing), loaded on first use."""
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    from indexer.store.model import load_collection_model

                    self._model = load_collection_model(self.collection, device=self._device)
        return self._model

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    # -- state --------------------------------------------------------------------------

    def _load_state(self, number: int, previous: _State | None) -> _State:
        snap = self.collection.snapshot(number)
        gen = snap.generation
        con = self._metadata(snap, previous)
        entry = gen.index
        index, index_path, covers = None, None, set()
        if entry:
            index_path = entry["path"]
            covers = set(entry.get("covers", []))
            if previous is not None and previous.index_path == index_path:
                index = previous.index
            else:
                index = self._open_index(entry)
                if index is None:
                    covers = set()
        uncovered = [s for s in gen.segments if s.n not in covers]
        deleted = snap.deleted_ids()
        delta_ids, delta_vecs = self._delta(snap, uncovered, previous, covers)
        return _State(snap, con, index, index_path, covers, delta_ids, delta_vecs, deleted, self._filter_cache_bytes)

    def _open_index(self, entry: dict):
        from indexer.ann import AnnIndex

        path = self.collection.path / entry["path"]
        mmap = self._mmap_index
        if mmap is None:
            mmap = bool(entry.get("info", {}).get("n", 0) > 2_000_000)
        try:
            return AnnIndex.load(str(path), mmap=mmap)
        except Exception as exc:  # derived data: search exactly rather than fail
            log.warning("cannot open the ANN index %s (%s); searching exactly", path, exc)
            return None

    def _delta(self, snap: Snapshot, uncovered, previous: _State | None, covers: set[int]):
        if previous is not None and previous.covers == covers and previous.delta_ids is not None:
            # Reuse vectors already loaded for segments that are still uncovered.
            known = previous.segments - previous.covers
            new = [s for s in uncovered if s.n not in known]
            ids_new, vecs_new = snap.load_vectors(new)
            ids = np.concatenate([previous.delta_ids, ids_new])
            vecs = np.concatenate([previous.delta_vecs, vecs_new])
            deleted = snap.deleted_ids()
            if deleted.size and ids.size:
                keep = ~member(ids, deleted)
                ids, vecs = ids[keep], vecs[keep]
            return ids, vecs
        return snap.load_vectors(uncovered)

    def _metadata(self, snap: Snapshot, previous: _State | None):
        gen = snap.generation
        if previous is not None and previous.segments <= {s.n for s in gen.segments}:
            # Incremental: the same connection gets the new rows and loses the retired ones,
            # in one transaction, so concurrent readers see one state or the other.
            con = previous.con
            new_segs = [s for s in gen.segments if s.n not in previous.segments]
            new_dels = [n for n in gen.deletes if n not in previous.delete_files]
            if new_segs or new_dels:
                cur = con.cursor()
                cur.execute("BEGIN TRANSACTION")
                try:
                    if new_segs:
                        cur.execute(f"INSERT INTO images {snap.images_sql(new_segs, live=False)}")
                    if new_dels:
                        cur.execute(f"DELETE FROM images WHERE id IN ({snap.retired_sql(new_dels)})")
                    cur.execute("CREATE OR REPLACE VIEW failures AS " + snap.failures_sql())
                    cur.execute("COMMIT")
                except Exception:
                    cur.execute("ROLLBACK")
                    raise
            return con
        con = snap.connect(materialize=True)
        # An ART index on id turns the metadata join of a page of hits into index lookups: at 1M rows
        # 3.9 ms instead of 7 ms for 11 rows (a scan of the id column otherwise). ~0.1 s to build;
        # DuckDB keeps it up to date through the incremental inserts and deletes above.
        con.execute("CREATE INDEX images_id ON images (id)")
        return con

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
                self._state = self._load_state(number, None if force else state)
            except IndexerError:
                raise
            except Exception as exc:  # keep serving the old state rather than fail every query
                log.warning(
                    "cannot load generation %d yet (%s); still serving %d", number, exc, state.generation.number
                )
                return False
            log.info("now serving generation %d (%d images)", number, self._state.generation.images)
            return True

    def _current(self) -> _State:
        if self.refresh_interval is not None and time.monotonic() - self._last_check >= self.refresh_interval:
            self.refresh()
        return self._state

    @property
    def generation(self) -> int:
        return self._state.generation.number

    @property
    def taxonomy(self) -> Taxonomy:
        return self._current().taxonomy()

    # -- information --------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Counts, model, index: what ``bioclip-index info`` shows."""
        state = self._current()
        gen = state.generation
        cur = state.cursor()
        by_source = dict(cur.execute("SELECT source, count(*) FROM images GROUP BY 1 ORDER BY 2 DESC").fetchall())
        by_reason = dict(cur.execute("SELECT reason, count(*) FROM failures GROUP BY 1 ORDER BY 2 DESC").fetchall())
        ranks = {}
        for rank, col in zip(RANKS, ("kingdom", "phylum", "class", "order", "family", "genus", "specificEpithet")):
            if rank == "species":
                q = 'SELECT count(*), count(DISTINCT ("genus" || \' \' || "specificEpithet")) FROM images WHERE "specificEpithet" IS NOT NULL AND "genus" IS NOT NULL'
            else:
                q = f"SELECT count({quote_ident(col)}), count(DISTINCT {quote_ident(col)}) FROM images"
            n_img, n_taxa = cur.execute(q).fetchall()[0]
            ranks[rank] = {"images": int(n_img), "taxa": int(n_taxa)}
        entry = gen.index or {}
        model = self.collection.model
        return {
            "path": str(self.collection.path),
            "format_version": self.collection.manifest["format_version"],
            "generation": gen.number,
            "images": gen.images,
            "failures": gen.failed,
            "retired": gen.deleted,
            "model": model.get("name") or model.get("source"),
            "model_info": model,
            "dimension": self.collection.dimension,
            "preprocess": model.get("preprocess"),
            "index": entry.get("factory") or ("Flat (exact, no index file)" if gen.images else None),
            "index_info": entry.get("info"),
            "unindexed_images": int(len(state.delta_ids)),
            "sources": by_source,
            "failures_by_reason": by_reason,
            "ranks": ranks,
            "extra_fields": list(gen.extra_keys),
            "created": self.collection.manifest.get("created"),
            "updated": gen.created,
            "last_build": gen.stats.get("last_build"),
        }

    def source_roots(self) -> dict[str, tuple[str, ...]]:
        """The folder(s) each source's local files live in: the only places its images may be
        served from.

        Taken, in this order, from the ``sources`` entry the build records in the generation's
        ``stats`` (``{name: {"root": PATH}}`` or ``{name: PATH}``), from the source's name when it is
        an existing folder (a folder source is named after its folder), and otherwise from the
        deepest folder that every local file of the source (a tar member's shard) lies in; a source
        whose files share no folder but ``/`` gets no root, so its images are not served.
        """
        recorded: dict[str, tuple[str, ...]] = {}
        try:
            stats = self.collection.latest_generation().stats or {}
        except Exception:  # a damaged generation file: fall back to what the rows say
            stats = {}
        for name, entry in (stats.get("sources") or {}).items():
            root = entry.get("root") if isinstance(entry, dict) else entry
            roots = [root] if isinstance(root, str) else list(root or [])
            if roots:
                recorded[str(name)] = tuple(roots)
        rows = (
            self._current()
            .cursor()
            .execute(
                "SELECT source, min(location), max(location) FROM images "
                f"WHERE location IS NOT NULL AND {kind_sql('location')} <> 'url' GROUP BY source"
            )
            .fetchall()
        )
        out: dict[str, tuple[str, ...]] = dict(recorded)
        for source, lo, hi in rows:
            if source is None or source in out:
                continue
            if os.path.isabs(source) and os.path.isdir(source):
                out[source] = (source,)
                continue
            root = _shared_folder(lo, hi)
            if root is None:
                log.warning("the images of source %r share no folder; they will not be shown", source)
                continue
            out[source] = (root,)
        return out

    def failures(self) -> list[dict[str, Any]]:
        cur = self._current().cursor()
        rel = cur.sql("SELECT key, source, location, stage, reason, detail, failed_at FROM failures ORDER BY key")
        cols = rel.columns
        return [dict(zip(cols, row)) for row in rel.fetchall()]

    def fields(self) -> list[tuple[str, str]]:
        """(name, type) of every field a filter may use in this collection."""
        from indexer.filters import available_fields

        return available_fields(self._current().generation.extra_keys)

    def count(self, filters: FilterInput = None) -> int:
        """How many images pass ``filters`` (all images without)."""
        state = self._current()
        flt = Filter.coerce(filters)
        if not flt:
            return int(state.generation.images)
        ids, _ = self._allowed(state, flt)
        return int(ids.size)

    def facet(self, column: str, filters: FilterInput = None, limit: int = 50) -> list[tuple[Any, int]]:
        """Value counts of a metadata column among the images passing ``filters``."""
        state = self._current()
        if column not in ALL_COLUMNS:
            raise QueryError(f"no column {column!r}")
        where, params = "TRUE", []
        flt = Filter.coerce(filters)
        if flt:
            where, params, _ = self._filter_sql(state, flt)
        col = quote_ident(column)
        return self._execute(
            state,
            f"SELECT {col}, count(*) FROM images WHERE {where} AND {col} IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {int(limit)}",
            params,
        )

    def clear_caches(self) -> None:
        """Forget cached text embeddings and filter selections (benchmarks; memory)."""
        with self._text_lock:
            self._text_cache.clear()
        self._state.filters = _IdCache(self._filter_cache_bytes)

    # -- lookups ------------------------------------------------------------------------

    def get(self, ids: Sequence[int]) -> list[Hit]:
        """Hits (score 0) for the given ids, in order; ids that are not live are left out."""
        state = self._current()
        meta = self._fetch_metadata(state, [int(i) for i in ids])
        return [Hit(int(i), 0.0, meta[int(i)]["location"], meta[int(i)]) for i in ids if int(i) in meta]

    def _fetch_metadata(self, state: _State, ids: list[int]) -> dict[int, dict[str, Any]]:
        if not ids:
            return {}
        cur = state.cursor()
        # "id = ANY(list)" is a semi-join DuckDB answers in ~1.5 ms at 1M rows (an IN list of
        # k parameters is ~10x slower: it becomes k OR-ed comparisons over every row)
        rel = cur.execute("SELECT * FROM images WHERE id = ANY(?)", [list(ids)])
        cols = [d[0] for d in rel.description]
        return {row[0]: dict(zip(cols, row)) for row in rel.fetchall()}

    def records_of(self, hit: Hit, limit: int = 50) -> list[Hit]:
        """Other images of the same specimen/record (same recordID, else same occurrenceID / catalogNumber)."""
        state = self._current()
        for col in ("recordID", "occurrenceID", "catalogNumber"):
            v = hit.get(col)
            if v:
                rows = (
                    state.cursor()
                    .execute(
                        f"SELECT id FROM images WHERE {quote_ident(col)} = ? AND id <> ? ORDER BY id LIMIT {int(limit)}",
                        [v, hit.id],
                    )
                    .fetchall()
                )
                return self.get([r[0] for r in rows])
        return []

    # -- filters ------------------------------------------------------------------------

    def _filter_sql(self, state: _State, flt: Filter) -> tuple[str, list, list[str]]:
        # The taxonomy (one GROUP BY over the collection) is built only when a filter needs it.
        needs_taxonomy = any(c.field.strip().lower() == "taxon" for c in flt.conditions)
        return flt.to_sql(state.generation.extra_keys, state.taxonomy() if needs_taxonomy else None)

    def _execute(self, state: _State, sql: str, params: list) -> list[tuple]:
        import duckdb

        try:
            return state.cursor().execute(sql, params).fetchall()
        except duckdb.Error as exc:  # a value DuckDB cannot compare: the user's filter, not a crash
            raise FilterError(f"cannot apply the filters: {str(exc).splitlines()[0]}") from None

    def _allowed(self, state: _State, flt: Filter) -> tuple[np.ndarray, list[str]]:
        """(sorted ids passing ``flt``, notices); cached per filter for the state's generation."""
        cached = state.filters.get(flt)
        if cached is not None:
            return cached
        import duckdb

        sql, params, notices = self._filter_sql(state, flt)
        try:
            rel = state.cursor().execute(f"SELECT id FROM images WHERE {sql}", params)
            ids = np.asarray(rel.fetchnumpy()["id"], dtype=np.int64)
        except duckdb.Error as exc:
            raise FilterError(f"cannot apply the filters: {str(exc).splitlines()[0]}") from None
        # Ids are unique (one row per id) and usually come back in table order, i.e. sorted; a
        # parallel scan may interleave them. np.sort, not np.unique: numpy's hash-based unique took
        # 440 ms for 700K ids where sorting takes a few ms.
        if ids.size > 1 and not bool((ids[1:] > ids[:-1]).all()):
            ids = np.sort(ids, kind="stable")
        ids.flags.writeable = False
        state.filters.put(flt, ids, list(notices))
        return ids, list(notices)

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
    ) -> SearchResult:
        """Answer one query: exactly one of ``text`` (words or a taxon name; a :class:`Query` is
        accepted here too), ``query`` (a weighted combination, see :mod:`indexer.query`),
        ``image`` (path, bytes or PIL image), ``image_id`` (more like an indexed image, which is left
        out of the results) or ``vector``.

        ``k`` hits after skipping ``offset`` (paging); ``filters``: a :class:`Filter`, a mapping
        (``{"country": "Kenya", "year": (None, 1950)}``) or ``--where`` strings; ``min_score``:
        leave out hits scoring below it; ``group``: fold near-duplicates (see
        :class:`indexer.query.Grouping`; ``True`` = same record). ``label`` words the
        interpretation of a vector query (e.g. "images like the uploaded photo").

        Raises QueryError (or FilterError) with a message for the user on a bad query.
        """
        t0 = time.perf_counter()
        given = sum(x is not None for x in (text, query, image, image_id, vector))
        if given != 1:
            raise QueryError("give exactly one of: text, a query, an image, an image id, a vector")
        k, offset = _check_int(k, "k", 1), _check_int(offset, "offset", 0)
        if min_score is not None:
            try:
                min_score = float(min_score)
            except (TypeError, ValueError):
                raise QueryError(f"the minimum score must be a number, got {min_score!r}") from None
            if not math.isfinite(min_score):
                raise QueryError("the minimum score must be a finite number")
        grouping = Grouping.coerce(group)
        flt = Filter.coerce(filters)
        q = self._as_query(text, query, image, image_id, vector, label)
        q.validate()
        state = self._current()
        timings: dict[str, float] = {}

        t = time.perf_counter()
        qvec, parts, notices = self._embed_query(state, q)
        timings["embed"] = (time.perf_counter() - t) * 1000
        interpretation = _interpret(q, parts, label)

        allowed = None
        candidates = None
        if flt:
            t = time.perf_counter()
            allowed, more = self._allowed(state, flt)
            timings["filter"] = (time.perf_counter() - t) * 1000
            notices += more
            candidates = int(allowed.size)
            interpretation += f", where {flt.describe()}"
        if grouping is not None:
            interpretation += f", {grouping.describe()}"
        exclude = np.unique(np.asarray(q.excluded_ids, dtype=np.int64)) if q.excluded_ids else None

        n_images = int(state.generation.images)
        if offset >= n_images:  # nothing there; and k + offset never sizes a search beyond the collection
            hits, has_more = [], False
            if n_images:
                notices.append(f"offset {offset:,} is past the end: the collection has {n_images:,} images")
        else:
            hits, has_more = self._ranked(
                state, qvec, min(k, n_images - offset), offset, allowed, exclude, min_score, grouping, timings
            )
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
            notices=_dedupe(notices),
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
        )

    def browse(self, filters: FilterInput = None, *, k: int = 50, offset: int = 0) -> SearchResult:
        """The images passing ``filters`` (all, without), in id order, with score 0: listing, not ranking."""
        t0 = time.perf_counter()
        k, offset = _check_int(k, "k", 1), _check_int(offset, "offset", 0)
        state = self._current()
        flt = Filter.coerce(filters)
        notices: list[str] = []
        if flt:
            ids_all, notices = self._allowed(state, flt)
            total = int(ids_all.size)
            ids = [int(i) for i in ids_all[offset : offset + k]]
        else:
            total = int(state.generation.images)
            ids = [
                r[0]
                for r in state.cursor()
                .execute(f"SELECT id FROM images ORDER BY id LIMIT {int(k)} OFFSET {int(offset)}")
                .fetchall()
            ]
        meta = self._fetch_metadata(state, ids)
        hits = [Hit(i, 0.0, meta[i]["location"], meta[i]) for i in ids if i in meta]
        what = "all images" + (f" where {flt.describe()}" if flt else "")
        return SearchResult(
            hits=hits,
            interpretation=what,
            notices=list(notices),
            candidates=total,
            generation=state.generation.number,
            elapsed_ms=(time.perf_counter() - t0) * 1000,
            has_more=offset + k < total,
        )

    def similar(self, image_id: int, **kwargs) -> SearchResult:
        """More like this: images nearest to an indexed image, excluding the image itself."""
        return self.search(image_id=image_id, **kwargs)

    # -- query embedding -----------------------------------------------------------------

    def resolve_taxon(self, text: str) -> list[TaxonMatch]:
        return self._current().taxonomy().resolve(text)

    @staticmethod
    def _as_query(text, query, image, image_id, vector, label) -> Query:
        if isinstance(text, (Query, Term)):
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

    def _embed_query(self, state: _State, q: Query) -> tuple[np.ndarray, list[EmbeddedTerm], list[str]]:
        """(unit query vector (1, d), each term as embedded, notices)."""
        notices: list[str] = []
        parts: list[EmbeddedTerm | None] = [None] * len(q.terms)
        texts: list[tuple[int, str]] = []
        for i, term in enumerate(q.terms):
            if term.kind in ("text", "taxon"):
                prompt, desc, taxon, alts, more = self._understand_text(state, term)
                notices += more
                parts[i] = EmbeddedTerm(term, np.empty(0, np.float32), desc, prompt, taxon, alts)
                texts.append((i, prompt))
            elif term.kind == "image":
                parts[i] = EmbeddedTerm(term, self.embed_image(term.value)[0], term.describe())
            elif term.kind == "id":
                parts[i] = EmbeddedTerm(term, self._stored_vector(state, term.value), f"image {term.value}")
            else:
                parts[i] = EmbeddedTerm(term, self._unit(term.value), term.label or "a vector")
        if texts:
            vecs, more = self._encode_texts([p for _, p in texts])
            notices += more
            for (i, _), v in zip(texts, vecs):
                parts[i].vector = v  # type: ignore[union-attr]
        done = [p for p in parts if p is not None]
        if len(done) == 1 and done[0].term.weight > 0:
            qvec = done[0].vector.reshape(1, -1).astype(np.float32)
        else:
            qvec = combine(np.stack([p.vector for p in done]), [p.term.weight for p in done])
        return qvec, done, notices

    def _understand_text(
        self, state: _State, term: Term
    ) -> tuple[str, str, TaxonMatch | None, list[TaxonMatch], list[str]]:
        """(prompt, description, taxon, other candidates, notices) for a text or taxon term."""
        text = " ".join(term.value.split())
        notices: list[str] = []
        matches = state.taxonomy().resolve(text)
        if matches:
            taxon = matches[0]
            if len(matches) > 1:
                notices.append(
                    f"{text!r} names several taxa in this collection: "
                    + "; ".join(f"{m.describe()} ({m.count} images)" for m in matches[:8])
                    + f". Searching for {taxon.describe()}; put a parent taxon before the name to choose another"
                    + (f" (e.g. '{_parent_hint(matches[1])}')" if _parent_hint(matches[1]) else "")
                    + "."
                )
            prompt = self._taxon_prompt(taxon)
            return prompt, f'{taxon.describe()}, as "{prompt}"', taxon, matches[1:], notices
        if term.kind == "taxon" or looks_like_scientific_name(text):
            # only for names: a typo check on every free-text query would cost time for nothing
            close = state.taxonomy().close_matches(text, 3)
            hint = "; did you mean " + " or ".join(m.name for m in close) + "?" if close else ""
            notices.append(f"no taxon named {text!r} in this collection; searched as free text{hint}")
        return text, f'free text "{text}"', None, [], notices

    def _encode_texts(self, prompts: list[str]) -> tuple[list[np.ndarray], list[str]]:
        """Unit vectors of ``prompts`` (cached), and a notice for each the model cuts short."""
        notices: list[str] = []
        out: dict[str, np.ndarray] = {}
        with self._text_lock:
            for p in prompts:
                v = self._text_cache.get(p)
                if v is not None:
                    self._text_cache.move_to_end(p)
                    out[p] = v
        todo = list(dict.fromkeys(p for p in prompts if p not in out))
        model = self.model
        for p in dict.fromkeys(prompts):
            if _truncated(model, p):
                notices.append(
                    f"the text {_short(p)!r} is longer than the model reads ({model.context_length} tokens); "
                    "the end was cut off"
                )
        if todo:
            vecs = model.encode_texts(todo)
            with self._text_lock:
                for p, v in zip(todo, vecs):
                    v = np.asarray(v, dtype=np.float32)
                    v.flags.writeable = False
                    out[p] = v
                    self._text_cache[p] = v
                while len(self._text_cache) > TEXT_CACHE_SIZE:
                    self._text_cache.popitem(last=False)
        return [out[p] for p in prompts], notices

    @staticmethod
    def _taxon_prompt(match: TaxonMatch) -> str:
        from bioclip.taxa import TextForm, taxon_prompt

        taxon = match.taxon()
        form = TextForm.TAXONOMIC_COMMON if match.common_name else TextForm.TAXONOMIC
        return taxon_prompt(taxon, form)

    def _stored_vector(self, state: _State, image_id: int) -> np.ndarray:
        if state.is_retired(int(image_id)):
            raise QueryError(f"image {image_id} is no longer in this collection")
        try:
            return state.vectors(np.array([int(image_id)]))[0]
        except KeyError:
            raise QueryError(f"no image with id {image_id} in this collection") from None

    def _unit(self, vector: Any) -> np.ndarray:
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        if v.size != self.collection.dimension:
            raise QueryError(f"vector has {v.size} dimensions; this collection has {self.collection.dimension}")
        norm = float(np.linalg.norm(v))
        if not np.isfinite(norm) or norm == 0:
            raise QueryError("the query vector is zero or not finite")
        return v / norm

    def embed_image(self, image: ImageInput) -> np.ndarray:
        """Embed a query image (path, bytes or PIL image) with the collection's preprocessing: (1, d)."""
        from indexer.errors import DecodeError
        from indexer.media.decode import decode_image

        model = self.model
        min_size = tuple(model.preprocess_config.draft_size)
        try:
            if isinstance(image, (str, Path)):
                try:
                    data = Path(image).read_bytes()
                except OSError as exc:
                    raise QueryError(f"cannot read the image {image}: {exc.strerror or exc}") from None
                pil = decode_image(data, min_size=min_size, name=str(image)).image
            elif isinstance(image, (bytes, bytearray, memoryview)):
                pil = decode_image(bytes(image), min_size=min_size).image
            elif hasattr(image, "convert") and hasattr(image, "size"):
                buf = io.BytesIO()
                image.save(buf, format="PNG")
                pil = decode_image(buf.getvalue(), min_size=min_size).image
            else:
                raise QueryError(f"cannot use a {type(image).__name__} as an image")
        except DecodeError as exc:
            raise QueryError(f"that file is not an image this engine can read ({exc.reason}: {exc.detail})") from None
        import torch

        tensor = model.transform(pil).unsqueeze(0)
        with torch.inference_mode():
            return model.encode_image_tensors(tensor)

    # -- ranking --------------------------------------------------------------------------

    def _ranked(
        self,
        state: _State,
        qvec: np.ndarray,
        k: int,
        offset: int,
        allowed,
        exclude,
        min_score,
        grouping: Grouping | None,
        timings: dict[str, float],
    ) -> tuple[list[Hit], bool]:
        """The page of hits (or group leaders) and whether a further page has results."""
        want = offset + k
        if grouping is None:
            t = time.perf_counter()
            pairs = self._pairs(state, qvec, want + 1, allowed, exclude, min_score)
            timings["search"] = (time.perf_counter() - t) * 1000
            has_more = len(pairs) > want
            page = pairs[offset:want]
            t = time.perf_counter()
            meta = self._fetch_metadata(state, [i for _, i in page])
            timings["metadata"] = (time.perf_counter() - t) * 1000
            # An id retired between the vector search and the lookup has no metadata: leave it out.
            return [Hit(i, s, meta[i]["location"], meta[i]) for s, i in page if i in meta], has_more

        depth = min(grouping.max_candidates, max(4 * want, want + 32))
        timings["search"] = timings["metadata"] = 0.0
        while True:
            t = time.perf_counter()
            pairs = self._pairs(state, qvec, depth, allowed, exclude, min_score)
            timings["search"] += (time.perf_counter() - t) * 1000
            exhausted = len(pairs) < depth
            t = time.perf_counter()
            meta = self._fetch_metadata(state, [i for _, i in pairs])
            timings["metadata"] += (time.perf_counter() - t) * 1000
            hits = [Hit(i, s, meta[i]["location"], meta[i]) for s, i in pairs if i in meta]
            groups = _group_hits(hits, grouping, state.vectors if grouping.similarity is not None else None)
            if len(groups) > want or exhausted or depth >= grouping.max_candidates:
                break
            depth = min(grouping.max_candidates, depth * 4)
        has_more = len(groups) > want or not exhausted
        return groups[offset:want], has_more

    def _pairs(
        self, state: _State, qvec: np.ndarray, depth: int, allowed, exclude, min_score
    ) -> list[tuple[float, int]]:
        scores, ids = self._knn(state, qvec, depth, allowed, exclude)
        pairs = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0]
        if min_score is not None:
            pairs = [(s, i) for s, i in pairs if s >= min_score]
        return pairs

    # -- nearest neighbours --------------------------------------------------------------

    def knn(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed_ids: np.ndarray | None = None,
        exclude_ids: np.ndarray | None = None,
        state: _State | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k nearest live images for each query row (m, d), merged over the
        ANN index and the not-yet-indexed segments; rows padded with (-inf, -1).

        ``allowed_ids``: only these ids may be returned (any order, retired ids are ignored);
        ``exclude_ids``: these never are."""
        state = state or self._current()
        allowed = None
        if allowed_ids is not None:
            allowed = sorted_unique(allowed_ids)
            if state.deleted.size:
                allowed = remove(allowed, state.deleted)
        exclude = None if exclude_ids is None or not len(exclude_ids) else sorted_unique(exclude_ids)
        return self._knn(state, queries, k, allowed, exclude)

    def _knn(
        self, state: _State, queries: np.ndarray, k: int, allowed: np.ndarray | None, exclude: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`knn` with ``allowed`` sorted, unique and live, ``exclude`` sorted unique (or None)."""
        queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.collection.dimension))
        m = queries.shape[0]
        parts_s, parts_i = [], []
        if allowed is not None and exclude is not None:
            allowed = remove(allowed, exclude)
        if state.index is not None and state.index.ntotal and (allowed is None or allowed.size):
            kwargs: dict[str, Any] = {"vector_lookup": state.vectors}
            if allowed is not None:
                kwargs["allowed_ids"] = allowed
            else:
                excluded = state.index_excluded
                if exclude is not None:
                    excluded = exclude if excluded is None else np.union1d(excluded, exclude)
                if excluded is not None and excluded.size:
                    kwargs["excluded_ids"] = excluded
            s, i = state.index.search(queries, k, **kwargs)
            parts_s.append(s)
            parts_i.append(i)
        if state.delta_ids is not None and len(state.delta_ids):
            ids, vecs = state.delta_ids, state.delta_vecs
            mask = None
            if allowed is not None:
                mask = member(ids, allowed)
            elif exclude is not None:
                mask = ~member(ids, exclude)
            if mask is not None:
                ids, vecs = ids[mask], vecs[mask]
            if len(ids):
                s, i = _exact_top(queries, vecs, ids, k)
                parts_s.append(s)
                parts_i.append(i)
        if not parts_s:
            return np.full((m, k), -np.inf, np.float32), np.full((m, k), -1, np.int64)
        s = np.concatenate(parts_s, axis=1)
        i = np.concatenate(parts_i, axis=1)
        s = np.where(i < 0, -np.inf, s)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        s = np.take_along_axis(s, order, axis=1)
        i = np.take_along_axis(i, order, axis=1)
        if s.shape[1] < k:
            pad = k - s.shape[1]
            s = np.concatenate([s, np.full((m, pad), -np.inf, np.float32)], axis=1)
            i = np.concatenate([i, np.full((m, pad), -1, np.int64)], axis=1)
        return s.astype(np.float32), i.astype(np.int64)


# -- helpers ------------------------------------------------------------------------------


def _shared_folder(lo: str | None, hi: str | None) -> str | None:
    """The deepest folder holding the local files of both locations (the min and max of a sorted
    set of paths hold every path between them in their common prefix)."""
    paths = [safe_local_path(local_path(loc)) if loc else None for loc in (lo, hi)]
    if paths[0] is None or paths[1] is None:
        return None
    common = os.path.commonpath([os.path.dirname(paths[0]), os.path.dirname(paths[1])])
    return None if common in ("", os.sep) else common


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise QueryError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise QueryError(f"{name} must be at least {minimum}" if minimum else f"{name} must not be negative")
    return int(value)


def _exact_top(queries: np.ndarray, vecs: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = queries @ vecs.T
    kk = min(k, len(ids))
    top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
    return np.take_along_axis(sims, top, axis=1), ids[top]


def _group_hits(hits: list[Hit], grouping: Grouping, lookup) -> list[Hit]:
    """Fold ``hits`` (score order) into groups; returns the leaders with ``group`` filled in."""
    leaders: list[Hit] = []
    members: list[list[Hit]] = []
    by_key: dict[str, int] = {}
    vecs = lookup(np.array([h.id for h in hits], dtype=np.int64)) if lookup is not None and hits else None
    leader_rows: list[int] = []
    for row, h in enumerate(hits):
        g = None
        key = record_key(h.metadata) if grouping.by_record else None
        if key is not None:
            g = by_key.get(key)
        if g is None and vecs is not None and leader_rows:
            sims = vecs[leader_rows] @ vecs[row]
            close = np.flatnonzero(sims >= grouping.similarity)
            if close.size:
                g = int(close[0])
        if g is None:
            g = len(leaders)
            leaders.append(h)
            members.append([])
            leader_rows.append(row)
        else:
            members[g].append(h)
        if key is not None:
            by_key.setdefault(key, g)
    return [Hit(h.id, h.score, h.location, h.metadata, tuple(m)) for h, m in zip(leaders, members)]


def _interpret(q: Query, parts: list[EmbeddedTerm], label: str | None) -> str:
    """How the query was understood, in words."""
    if len(parts) == 1 and parts[0].term.weight == 1.0:
        p = parts[0]
        kind = p.term.kind
        if kind in ("text", "taxon"):
            return p.description
        if kind == "image":
            return "images similar to the uploaded picture" + (f" {p.term.label}" if p.term.label else "")
        if kind == "id":
            return f"images similar to image {p.term.value}"
        return label or "a vector query"
    words = []
    for n, p in enumerate(parts):
        w = p.term.weight
        sign = "-" if w < 0 else "+"
        mag = abs(w)
        what = (
            p.description
            if p.term.kind in ("text", "taxon")
            else (f"image {p.term.value}" if p.term.kind == "id" else p.term.describe())
        )
        text = what if mag == 1.0 else f"{mag:g} x {what}"
        words.append(text if n == 0 and sign == "+" else f"{sign} {text}")
    return "combination: " + " ".join(words)


def _parent_hint(m: TaxonMatch) -> str | None:
    """'Moraceae Morus': the nearest higher taxon and the name, which resolves to just ``m``."""
    above = [v for v in m.lineage[: RANKS.index(m.rank)] if v and v != m.lineage[5]]
    return f"{above[-1]} {m.name}" if above else None


def _truncated(model: Any, text: str) -> bool:
    try:
        return bool(model.text_is_truncated(text))
    except Exception:  # a tokenizer that cannot count: say nothing rather than fail the search
        return False


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
