"""The search engine: open a collection and answer text, taxon, image, id and vector queries.

Contracts:

- Scores are cosine similarities (inner products of L2-normalised vectors), highest first.
- Every committed image is searchable: images in segments the ANN index does not cover yet are
  searched exactly and merged in; retired ids never come back.
- Readers never block on writers. The engine serves one generation at a time and, at most every
  ``refresh_interval`` seconds, looks for a newer one; switching is atomic for queries in flight.
- Thread-safe: one engine serves every session of the app. The model is loaded once, lazily
  (a search CLI that only filters or looks up ids never imports torch).
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from indexer.collection import Collection, Snapshot
from indexer.errors import IndexerError, QueryError
from indexer.filters import Filter
from indexer.schema import ALL_COLUMNS, RANKS, quote_ident
from indexer.taxonomy import TaxonMatch, Taxonomy

__all__ = ["Hit", "SearchResult", "SearchEngine", "ImageInput"]

log = logging.getLogger(__name__)

ImageInput = Any  # a path (str / Path), bytes, or a PIL image

_HIDDEN = {"meta_hash"}


@dataclass(frozen=True)
class Hit:
    """One result: the image's id, similarity score, where its bytes are, and its metadata."""

    id: int
    score: float
    location: str
    metadata: dict[str, Any]

    def get(self, name: str, default: Any = None) -> Any:
        v = self.metadata.get(name)
        return default if v is None else v

    @property
    def scientific_name(self) -> str | None:
        return self.get("scientificName") or _binomial(self.metadata)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: id, score, location, then every non-empty metadata field."""
        out: dict[str, Any] = {"id": self.id, "score": round(float(self.score), 6), "location": self.location}
        for k, v in self.metadata.items():
            if v is None or k in ("id", "location") or k in _HIDDEN:
                continue
            out[k] = v.isoformat() if hasattr(v, "isoformat") else v
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
    prompt: str | None = None  # the text sent to the model, when there was text
    taxon: TaxonMatch | None = None
    query_vector: np.ndarray | None = None  # (1, d) float32, to reuse (facets, paging) without re-encoding

    def to_dict(self) -> dict[str, Any]:
        return {
            "interpretation": self.interpretation,
            "notices": list(self.notices),
            "candidates": self.candidates,
            "generation": self.generation,
            "hits": [h.to_dict() for h in self.hits],
        }


def _binomial(meta: dict) -> str | None:
    g, s = meta.get("genus"), meta.get("specificEpithet")
    if g and s:
        return f"{g} {s}"
    return None


class _State:
    """Everything needed to answer queries against one generation. Never mutated once published."""

    def __init__(self, snapshot: Snapshot, con, index, index_path: str | None, covers: set[int], delta_ids, delta_vecs, deleted):
        self.snapshot = snapshot
        self.con = con
        self.index = index
        self.index_path = index_path
        self.covers = covers
        self.delta_ids = delta_ids
        self.delta_vecs = delta_vecs
        self.deleted = deleted
        self.segments = {s.n for s in snapshot.generation.segments}
        self.delete_files = set(snapshot.generation.deletes)
        self._taxonomy: Taxonomy | None = None
        self._lock = threading.Lock()

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
    ):
        self.collection = collection
        self._model = model
        self._device = device
        self._model_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self.refresh_interval = refresh_interval
        self._mmap_index = mmap_index
        self._last_check = time.monotonic()
        self._state = self._load_state(collection.latest_generation_number(), None)

    @classmethod
    def open(cls, path: str | os.PathLike, **kwargs) -> "SearchEngine":
        """Open the collection at ``path``. Raises CollectionNotFoundError / FormatVersionError."""
        return cls(Collection.open(path), **kwargs)

    # -- model --------------------------------------------------------------------------

    @property
    def model(self):
        """The collection's model (same source, revision and preprocessing), loaded on first use."""
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    from indexer.pipeline import load_collection_model

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
        return _State(snap, con, index, index_path, covers, delta_ids, delta_vecs, deleted)

    def _open_index(self, entry: dict):
        from indexer import ann

        path = self.collection.path / entry["path"]
        mmap = self._mmap_index
        if mmap is None:
            mmap = bool(entry.get("info", {}).get("n", 0) > 2_000_000)
        try:
            return ann.AnnIndex.load(str(path), mmap=mmap)
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
                keep = ~np.isin(ids, deleted)
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
                        cols = ", ".join(quote_ident(c) for c in ALL_COLUMNS)
                        files = "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in snap.segment_paths(new_segs)) + "]"
                        cur.execute(f"INSERT INTO images SELECT {cols} FROM read_parquet({files}, union_by_name = true)")
                    if new_dels:
                        paths = [str(self.collection.path / "segments" / f"del-{n:08d}.parquet") for n in new_dels]
                        files = "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"
                        cur.execute(f"DELETE FROM images WHERE id IN (SELECT id FROM read_parquet({files}))")
                    cur.execute("CREATE OR REPLACE VIEW failures AS " + snap.failures_sql())
                    cur.execute("COMMIT")
                except Exception:
                    cur.execute("ROLLBACK")
                    raise
            return con
        return snap.connect(materialize=True)

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
                log.warning("cannot load generation %d yet (%s); still serving %d", number, exc, state.generation.number)
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

    def failures(self) -> list[dict[str, Any]]:
        cur = self._current().cursor()
        rel = cur.sql("SELECT key, source, location, stage, reason, detail, failed_at FROM failures ORDER BY key")
        cols = rel.columns
        return [dict(zip(cols, row)) for row in rel.fetchall()]

    def count(self, filters: Filter | None = None) -> int:
        state = self._current()
        if not filters:
            return int(state.generation.images)
        sql, params, _ = filters.to_sql(state.generation.extra_keys, state.taxonomy())
        return int(state.cursor().execute(f"SELECT count(*) FROM images WHERE {sql}", params).fetchall()[0][0])

    def facet(self, column: str, filters: Filter | None = None, limit: int = 50) -> list[tuple[Any, int]]:
        """Value counts of a metadata column among the images passing ``filters``."""
        state = self._current()
        if column not in ALL_COLUMNS:
            raise QueryError(f"no column {column!r}")
        where, params = "TRUE", []
        if filters:
            where, params, _ = filters.to_sql(state.generation.extra_keys, state.taxonomy())
        col = quote_ident(column)
        return state.cursor().execute(
            f"SELECT {col}, count(*) FROM images WHERE {where} AND {col} IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {int(limit)}",
            params,
        ).fetchall()

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
        rel = cur.sql("SELECT * FROM images WHERE id IN (SELECT unnest($ids))", params={"ids": ids})
        cols = rel.columns
        return {row[0]: dict(zip(cols, row)) for row in rel.fetchall()}

    def records_of(self, hit: Hit, limit: int = 50) -> list[Hit]:
        """Other images of the same specimen/record (same recordID, else same occurrenceID / catalogNumber)."""
        state = self._current()
        for col in ("recordID", "occurrenceID", "catalogNumber"):
            v = hit.get(col)
            if v:
                rows = state.cursor().execute(
                    f"SELECT id FROM images WHERE {quote_ident(col)} = ? AND id <> ? ORDER BY id LIMIT {int(limit)}",
                    [v, hit.id],
                ).fetchall()
                return self.get([r[0] for r in rows])
        return []

    # -- queries ------------------------------------------------------------------------

    def search(
        self,
        text: str | None = None,
        *,
        image: ImageInput | None = None,
        image_id: int | None = None,
        vector: np.ndarray | None = None,
        k: int = 10,
        offset: int = 0,
        filters: Filter | None = None,
        min_score: float | None = None,
        label: str | None = None,
    ) -> SearchResult:
        """Answer one query. Exactly one of ``text``, ``image``, ``image_id``, ``vector``.

        ``label`` words the interpretation of a vector query (e.g. "images like the uploaded photo").
        Raises QueryError (or FilterError) with a message for the user on a bad query.
        """
        t0 = time.perf_counter()
        given = [x is not None for x in (text, image, image_id, vector)]
        if sum(given) != 1:
            raise QueryError("give exactly one of: text, an image, an image id, a vector")
        if k < 1:
            raise QueryError("k must be at least 1")
        if offset < 0:
            raise QueryError("offset must not be negative")
        state = self._current()
        notices: list[str] = []
        exclude: np.ndarray | None = None
        prompt = None
        taxon = None
        if text is not None:
            qvec, interpretation, prompt, taxon, more = self._text_vector(state, text)
            notices += more
        elif image is not None:
            qvec = self.embed_image(image)
            interpretation = "images similar to the uploaded picture"
        elif image_id is not None:
            try:
                qvec = state.snapshot.get_vectors([int(image_id)])
            except KeyError:
                raise QueryError(f"no image with id {image_id} in this collection") from None
            if state.deleted.size and np.isin(int(image_id), state.deleted):
                raise QueryError(f"image {image_id} is no longer in this collection")
            exclude = np.array([int(image_id)], dtype=np.int64)
            interpretation = f"images similar to image {image_id}"
        else:
            qvec = np.asarray(vector, dtype=np.float32).reshape(1, -1)
            if qvec.shape[1] != self.collection.dimension:
                raise QueryError(f"vector has {qvec.shape[1]} dimensions; this collection has {self.collection.dimension}")
            norm = np.linalg.norm(qvec)
            if not np.isfinite(norm) or norm == 0:
                raise QueryError("the query vector is zero or not finite")
            qvec = qvec / norm
            interpretation = label or "a vector query"

        allowed = None
        candidates = None
        if filters:
            sql, params, more = filters.to_sql(state.generation.extra_keys, state.taxonomy())
            notices += more
            allowed = state.cursor().execute(f"SELECT id FROM images WHERE {sql}", params).fetchnumpy()["id"]
            allowed = np.asarray(allowed, dtype=np.int64)
            candidates = int(allowed.size)
            interpretation += f", where {filters.describe()}"
        hits = self._knn_hits(state, qvec, k + offset, allowed, exclude, min_score)[offset:]
        if not hits and filters and candidates == 0:
            notices.append("no image matches the filters")
        return SearchResult(
            hits=hits,
            interpretation=interpretation,
            notices=notices,
            candidates=candidates,
            generation=state.generation.number,
            elapsed_ms=(time.perf_counter() - t0) * 1000,
            prompt=prompt,
            taxon=taxon,
            query_vector=np.asarray(qvec, dtype=np.float32).reshape(1, -1),
        )

    def browse(self, filters: Filter | None = None, *, k: int = 50, offset: int = 0) -> SearchResult:
        """The images passing ``filters`` (all, without), in id order, with score 0: listing, not ranking."""
        t0 = time.perf_counter()
        state = self._current()
        where, params, notices = "TRUE", [], []
        if filters:
            where, params, notices = filters.to_sql(state.generation.extra_keys, state.taxonomy())
        cur = state.cursor()
        total = int(cur.execute(f"SELECT count(*) FROM images WHERE {where}", params).fetchall()[0][0])
        ids = [r[0] for r in cur.execute(
            f"SELECT id FROM images WHERE {where} ORDER BY id LIMIT {int(k)} OFFSET {int(offset)}", params
        ).fetchall()]
        meta = self._fetch_metadata(state, ids)
        hits = [Hit(i, 0.0, meta[i]["location"], meta[i]) for i in ids if i in meta]
        what = "all images" + (f" where {filters.describe()}" if filters else "")
        return SearchResult(
            hits=hits, interpretation=what, notices=list(notices), candidates=total,
            generation=state.generation.number, elapsed_ms=(time.perf_counter() - t0) * 1000,
        )

    def similar(self, image_id: int, **kwargs) -> SearchResult:
        """More like this: images nearest to an indexed image, excluding the image itself."""
        return self.search(image_id=image_id, **kwargs)

    # -- query embedding -----------------------------------------------------------------

    def resolve_taxon(self, text: str) -> list[TaxonMatch]:
        return self._current().taxonomy().resolve(text)

    def _text_vector(self, state: _State, text: str):
        if not isinstance(text, str) or not text.strip():
            raise QueryError("the search text is empty")
        text = " ".join(text.split())
        notices: list[str] = []
        matches = state.taxonomy().resolve(text)
        taxon = None
        if matches:
            taxon = matches[0]
            if len(matches) > 1:
                notices.append(
                    f"{text!r} names several taxa in this collection: "
                    + "; ".join(f"{m.describe()} ({m.count} images)" for m in matches[:8])
                    + f". Searching for {taxon.describe()}."
                )
            prompt = self._taxon_prompt(taxon)
            interpretation = f'{taxon.describe()}, as "{prompt}"'
        else:
            prompt = text
            interpretation = f'free text "{text}"'
        model = self.model
        if model.text_is_truncated(prompt):
            notices.append(
                f"the text is longer than the model reads ({model.context_length} tokens); the end was cut off"
            )
        vec = model.encode_texts([prompt])
        return vec, interpretation, prompt, taxon, notices

    @staticmethod
    def _taxon_prompt(match: TaxonMatch) -> str:
        from bioclip.taxa import TextForm, taxon_prompt

        taxon = match.taxon()
        form = TextForm.TAXONOMIC_COMMON if match.common_name else TextForm.TAXONOMIC
        return taxon_prompt(taxon, form)

    def embed_image(self, image: ImageInput) -> np.ndarray:
        """Embed a query image (path, bytes or PIL image) with the collection's preprocessing."""
        from indexer.decode import decode_image
        from indexer.errors import DecodeError

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

    # -- nearest neighbours --------------------------------------------------------------

    def _knn_hits(self, state: _State, qvec: np.ndarray, k: int, allowed, exclude, min_score) -> list[Hit]:
        scores, ids = self.knn(qvec, k, allowed_ids=allowed, exclude_ids=exclude, state=state)
        pairs = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0]
        if min_score is not None:
            pairs = [(s, i) for s, i in pairs if s >= min_score]
        meta = self._fetch_metadata(state, [i for _, i in pairs])
        # An id retired between the vector search and the lookup has no metadata: leave it out.
        return [Hit(i, s, meta[i]["location"], meta[i]) for s, i in pairs if i in meta]

    def knn(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed_ids: np.ndarray | None = None,
        exclude_ids: np.ndarray | None = None,
        state: _State | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k nearest live images for each query row, merged over the ANN
        index and the not-yet-indexed segments; rows padded with id -1."""
        state = state or self._current()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        m = queries.shape[0]
        parts_s, parts_i = [], []
        excluded = state.deleted
        if exclude_ids is not None and len(exclude_ids):
            excluded = np.union1d(excluded, exclude_ids)
        if allowed_ids is not None and excluded.size:
            allowed_ids = np.setdiff1d(allowed_ids, excluded, assume_unique=False)
        if state.index is not None and state.index.ntotal:
            kwargs: dict[str, Any] = {}
            if allowed_ids is not None:
                kwargs["allowed_ids"] = allowed_ids
                kwargs["vector_lookup"] = state.snapshot.get_vectors
            elif excluded.size:
                kwargs["excluded_ids"] = excluded
            s, i = state.index.search(queries, k, **kwargs)
            parts_s.append(s)
            parts_i.append(i)
        if state.delta_ids is not None and len(state.delta_ids):
            ids, vecs = state.delta_ids, state.delta_vecs
            mask = None
            if allowed_ids is not None:
                mask = np.isin(ids, allowed_ids)
            elif exclude_ids is not None and len(exclude_ids):
                mask = ~np.isin(ids, exclude_ids)
            if mask is not None:
                ids, vecs = ids[mask], vecs[mask]
            if len(ids):
                sims = queries @ vecs.T
                kk = min(k, len(ids))
                top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
                parts_s.append(np.take_along_axis(sims, top, axis=1))
                parts_i.append(ids[top])
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
