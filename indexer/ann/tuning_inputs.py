"""Where a collection's tuning queries come from, kind by kind, when its index is (re)built.

In order of preference, for each kind:

1. the user's file (``bioclip-index reindex C --tune-queries FILE [--tune-kind KIND]``): a ``.npy``
   of query vectors (m, d), or a text file of queries, one per line, embedded with the collection's
   model;
2. the collection's query log (:mod:`indexer.store.querylog`), when it holds at least
   ``LOG_MIN_QUERIES`` queries of that kind: real queries are the best tuning set there is;
3. for text, the collection's own taxa and the generic vocabulary (:mod:`indexer.ann.text_queries`);
   for image, sampled stored vectors; for mixed, combinations of the text queries with sampled
   stored vectors (both made by :class:`indexer.ann.tuning_set.TuningSet`).

A set that comes out empty (an empty file) is an :class:`~indexer.errors.EmptyTuningSetError`.
The model is loaded only when something needs embedding (``load_model``), so a ``reindex`` whose
phrases are all cached never loads it; when it cannot be loaded, text is tuned on what is cached,
or not at all, with a warning, and the index says so (a kind that was not measured).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.ann.info import check_kind
from indexer.ann.text_queries import PhraseCache, text_tuning_queries
from indexer.ann.tuning_set import KindQueries
from indexer.errors import EmptyTuningSetError, TuningSetError
from indexer.store.querylog import read_query_log

__all__ = ["TuningInputs", "gather", "read_query_file", "LOG_MIN_QUERIES"]

log = logging.getLogger(__name__)

LOG_MIN_QUERIES = 100


@dataclass(frozen=True)
class TuningInputs:
    """What an index build may tune on besides the stored vectors: a loaded ``model`` (or a
    ``load_model()`` to call when one is needed), a user's ``queries_file`` of ``file_kind``, and
    whether to use the collection's query log."""

    model: Any = None
    load_model: Callable[[], Any] | None = None
    queries_file: str | Path | None = None
    file_kind: str = "text"
    use_log: bool = True

    def __post_init__(self) -> None:
        check_kind(self.file_kind)


class _Embedder:
    """``model.encode_texts``, the model loaded on first use (once; a failure is remembered)."""

    def __init__(self, inputs: TuningInputs):
        self._model = inputs.model
        self._load = inputs.load_model
        self.error: str | None = None

    def available(self) -> bool:
        if self._model is None and self._load is not None and self.error is None:
            try:
                self._model = self._load()
            except Exception as exc:  # no weights offline, a missing package...: tune without it
                self.error = str(exc) or type(exc).__name__
                log.warning("cannot load the collection's model to embed text tuning queries: %s", exc)
        return self._model is not None

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not self.available():
            raise TuningSetError(f"text tuning queries need the collection's model: {self.error or 'none given'}")
        return np.asarray(self._model.encode_texts(texts), dtype=np.float32)


def gather(collection: Any, con: Any, inputs: TuningInputs, *, exact: bool = False) -> dict[str, KindQueries]:
    """kind -> tuning queries for an index over ``collection`` (``con``: a DuckDB connection with its
    ``images``), by the order of preference in the module docstring. Image is left to the build
    (sampled stored vectors) unless a file or the log gives image queries; so is mixed, unless
    given, when there are text queries. ``exact``: the index will be exact search, which needs no
    tuning; only the user's file is read (a bad one is an error whatever the index)."""
    d = int(collection.dimension)
    embed = _Embedder(inputs)
    out: dict[str, KindQueries] = {}
    if inputs.queries_file is not None:
        out[inputs.file_kind] = read_query_file(inputs.queries_file, d, embed)
    if exact:
        return out
    if inputs.use_log:
        for kind, vecs in read_query_log(collection.path, d).items():
            if kind in out:
                continue
            if len(vecs) >= LOG_MIN_QUERIES:
                out[kind] = KindQueries.of(vecs, f"logged {kind} queries", "log", d=d)
            else:
                log.info("the query log holds %d %s queries (< %d): not used yet", len(vecs), kind, LOG_MIN_QUERIES)
    if "text" not in out:
        cache = PhraseCache(collection.path, collection.model)
        text = text_tuning_queries(con, cache, embed)
        if text is None:
            log.warning("text queries are not tuned: %s", embed.error or "no model to embed the phrases")
        else:
            out["text"] = text
    return out


def read_query_file(path: str | Path, d: int, embed: Callable[[list[str]], np.ndarray] | None) -> KindQueries:
    """Tuning queries from a user's file: a ``.npy`` array of vectors (m, d), or a text file of
    queries, one per line (blank lines and lines starting with ``#`` skipped), embedded with
    ``embed``. Raises TuningSetError / EmptyTuningSetError naming the file."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise TuningSetError(f"cannot read the tuning queries {path}: {exc}") from None
        try:
            return KindQueries.of(arr, f"queries from {path.name}", "file", d=d)
        except EmptyTuningSetError:
            raise EmptyTuningSetError(f"the tuning query file {path} holds no vectors") from None
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise TuningSetError(
            f"cannot read the tuning queries {path} (a .npy of vectors or a UTF-8 text file): {exc}"
        ) from None
    texts = list(dict.fromkeys(t for t in lines if t and not t.startswith("#")))
    if not texts:
        raise EmptyTuningSetError(f"the tuning query file {path} holds no queries")
    if embed is None:
        raise TuningSetError(f"the queries in {path} need the collection's model to be embedded")
    return KindQueries.of(np.asarray(embed(texts)), f"queries from {path.name}", "file", d=d)
