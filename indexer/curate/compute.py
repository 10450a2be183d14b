"""Compute the curation data of a collection, or bring it up to date (:func:`curate`).

Per image: a fingerprint (its ``sha256``, or the digest of its stored vector for imported
embeddings), its ``k`` nearest neighbours from the ANN index (:meth:`SearchEngine.knn`, never all
pairs), its top-5 zero-shot taxa per rank (:mod:`indexer.curate.labels`) and, with reference labels,
its top-5 Tree-of-Life species.

Incremental (the default when ``curation/`` holds an earlier state for the same model, ``k`` and
reference labels): only images in segments the state does not cover are read; an image whose
fingerprint changed (new pixels) or that is new gets predictions and neighbours; each new image is
offered to the lists of its ``3k`` nearest earlier images (a list takes it when it is nearer than its
``k``-th neighbour); retired ids are dropped, and every list that held one is searched again. When
the collection's taxa change (a new species), every image's zero-shot scores are recomputed (one
matrix product; the neighbours stay). Labels are never part of the stored data: the lists read the
current labels, so metadata edits need no recomputation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from indexer.curate.labels import (
    TOP,
    LabelSet,
    describe_reference,
    label_set,
    reference_names,
    reference_scores,
    score_images,
)
from indexer.curate.options import CurateOptions
from indexer.curate.store import CurationState, CurationStore
from indexer.errors import CurationError
from indexer.store.generations import utc_stamp
from indexer.store.ids import member
from indexer.store.schema import RANKS

__all__ = ["CurateReport", "curate", "open_engine"]

log = logging.getLogger(__name__)


@dataclass
class CurateReport:
    """What a curation run did."""

    collection: str
    generation: int = 0
    images: int = 0
    full: bool = True
    predicted: int = 0  # images given zero-shot scores
    searched: int = 0  # images whose neighbours were searched
    lists_updated: int = 0  # earlier images whose neighbour list took a new image
    retired: int = 0
    labels: int = 0
    seconds: float = 0.0
    up_to_date: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def open_engine(collection: Any, model: Any = None) -> Any:
    """A SearchEngine over ``collection`` (a path, a Collection or an engine)."""
    from indexer.search.engine import SearchEngine
    from indexer.store import Collection

    if isinstance(collection, SearchEngine):
        return collection
    col = collection if isinstance(collection, Collection) else Collection.open(collection)
    return SearchEngine(col, model=model, refresh_interval=None)


def _fingerprints(shas: list, vecs: np.ndarray) -> np.ndarray:
    out = np.empty(len(shas), dtype=np.int64)
    for i, sha in enumerate(shas):
        data = sha.encode() if sha else np.ascontiguousarray(vecs[i], dtype=np.float16).tobytes()
        out[i] = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)
    return out


def _read(snap: Any, segments: list, bar: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, unit float32 vectors, fingerprints) of the live images of ``segments``."""
    import duckdb

    ids_p, vec_p = [], []
    for ids, vecs in snap.iter_vectors(segments):
        ids_p.append(ids)
        vec_p.append(np.asarray(vecs, dtype=np.float32))
    if not ids_p:
        return np.empty(0, np.int64), np.empty((0, snap.dimension), np.float32), np.empty(0, np.int64)
    ids, vecs = np.concatenate(ids_p), np.concatenate(vec_p)
    con = duckdb.connect(":memory:")
    rows = con.execute(f"SELECT id, sha256 FROM ({snap.images_sql(segments)}) ORDER BY id").fetchall()
    sha = dict(rows)
    order = np.argsort(ids, kind="stable")
    ids, vecs = ids[order], vecs[order]
    fp = _fingerprints([sha.get(int(i)) for i in ids], vecs)
    if bar is not None:
        bar.set_postfix_str(f"read {len(ids)}")
    return ids, vecs, fp


def _search(engine: Any, vecs: np.ndarray, ids: np.ndarray, k: int, batch: int, bar: Any = None) -> tuple:
    """(n, k) neighbour ids and cosines of each vector, itself left out."""
    n = len(ids)
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_sc = np.full((n, k), -np.inf, dtype=np.float32)
    for lo in range(0, n, batch):
        sc, nb = engine.knn(vecs[lo : lo + batch], k + 1)
        self_hit = nb == ids[lo : lo + batch, None]
        # drop the image itself (or, when it was not returned, the farthest neighbour)
        drop = np.where(self_hit.any(axis=1), self_hit.argmax(axis=1), k)
        keep = np.ones(nb.shape, dtype=bool)
        keep[np.arange(len(nb)), drop] = False
        out_ids[lo : lo + len(nb)] = nb[keep].reshape(len(nb), k)
        out_sc[lo : lo + len(nb)] = sc[keep].reshape(len(nb), k)
        if bar is not None:
            bar.update(len(nb))
    return out_ids, out_sc


def merge_lists(nbr_ids: np.ndarray, nbr_sc: np.ndarray, rows: np.ndarray, cand: tuple) -> int:
    """Offer candidate neighbours (``cand`` = (ids, cosines) of each row in ``rows``) to those rows'
    lists, in place: each list keeps its ``k`` nearest, without repeats. Returns lists changed."""
    if not len(rows):
        return 0
    cand_ids, cand_sc = cand
    k = nbr_ids.shape[1]
    r = np.concatenate([np.repeat(rows, k), np.asarray(rows)])
    i = np.concatenate([nbr_ids[rows].reshape(-1), cand_ids])
    s = np.concatenate([nbr_sc[rows].reshape(-1), cand_sc.astype(np.float32)])
    order = np.lexsort((-s, r))
    r, i, s = r[order], i[order], s[order]
    first = np.ones(len(r), dtype=bool)
    # the same id twice in a row's list: keep its first (best) entry
    pair = np.lexsort((np.arange(len(r)), i, r))
    dup = np.zeros(len(r), dtype=bool)
    same = (r[pair][1:] == r[pair][:-1]) & (i[pair][1:] == i[pair][:-1])
    dup[pair[1:][same]] = True
    first &= ~dup & (i >= 0)
    r, i, s = r[first], i[first], s[first]
    start = np.searchsorted(r, r, side="left")
    pos = np.arange(len(r)) - start
    ok = pos < k
    before = nbr_ids[rows].copy()
    uniq = np.unique(rows)
    nbr_ids[uniq] = -1
    nbr_sc[uniq] = -np.inf
    nbr_ids[r[ok], pos[ok]] = i[ok]
    nbr_sc[r[ok], pos[ok]] = s[ok]
    return int((nbr_ids[rows] != before).any(axis=1).sum())


def _compatible(prev: CurationState | None, engine: Any, options: CurateOptions) -> bool:
    if prev is None or options.full:
        return False
    m = prev.manifest
    model = engine.collection.model
    same_model = m.get("model", {}).get("source") == model.get("source") and m.get("model", {}).get(
        "revision"
    ) == model.get("revision")
    return same_model and int(m.get("k", -1)) == options.k and m.get("reference_path") == options.reference_labels


def curate(collection: Any, *, model: Any = None, options: CurateOptions | None = None) -> CurateReport:
    """Compute (or bring up to date) the curation data of ``collection`` (a path, Collection or
    SearchEngine). ``model``: an already loaded model (else the collection's, loaded only when
    taxa must be scored). Raises CurationError, ReferenceLabelsNotFoundError."""
    t0 = time.monotonic()
    options = options or CurateOptions()
    if options.k < 1:
        raise CurationError(f"k must be at least 1, not {options.k}")
    engine = open_engine(collection, model)
    store = CurationStore(engine.collection)
    report = CurateReport(collection=str(engine.collection.path))
    with store.locked():
        snap = engine.collection.snapshot(engine.generation)
        gen = snap.generation
        prev = store.load() if not options.full else None
        incremental = _compatible(prev, engine, options)
        report.full = not incremental
        report.generation = gen.number
        if incremental and prev is not None and prev.generation == gen.number:
            report.images, report.up_to_date = len(prev.ids), True
            report.seconds = time.monotonic() - t0
            return report
        covered = set(prev.manifest.get("segments", [])) if incremental and prev is not None else set()
        todo_segments = [s for s in gen.segments if s.n not in covered]
        bar = _bar(sum(s.rows for s in todo_segments), options.progress)
        try:
            state = _update(
                engine,
                store,
                snap,
                prev if incremental else None,
                segments=todo_segments,
                options=options,
                report=report,
                bar=bar,
            )
        finally:
            if bar is not None:
                bar.close()
        store.save(state)
    report.images = len(state.ids)
    report.seconds = time.monotonic() - t0
    log.info("curation of %s: %s", report.collection, report.to_dict())
    return report


def _bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", dynamic_ncols=True, desc="curating")


def _update(engine, store, snap, prev, *, segments, options: CurateOptions, report: CurateReport, bar) -> CurationState:
    k = options.k
    new_ids, new_vecs, new_fp = _read(snap, segments, bar)
    live = _live_ids(snap, engine)
    if prev is not None:
        arrays = dict(prev.arrays)
        keep = member(arrays["ids"], live)
        rows_new = prev.rows(new_ids)
        unchanged = (rows_new >= 0) & (arrays["fp"][np.maximum(rows_new, 0)] == new_fp)
        changed_old = arrays["ids"][rows_new[(rows_new >= 0) & ~unchanged]] if len(rows_new) else np.empty(0, np.int64)
        keep &= ~member(arrays["ids"], np.sort(changed_old))
        report.retired = int((~keep).sum()) - len(changed_old)
        gone = np.sort(arrays["ids"][~keep])
        arrays = {name: a[keep] for name, a in arrays.items()}
        fresh = ~unchanged
        new_ids, new_vecs, new_fp = new_ids[fresh], new_vecs[fresh], new_fp[fresh]
    else:
        gone = np.empty(0, np.int64)
        arrays = _empty(snap.dimension, k)
    labels = _labels(engine, store, live.size)
    ref = _reference(engine, options)
    # predictions for the new images (and for every image when the taxa changed)
    relabel = prev is None or labels is None or prev.manifest.get("labels", {}) != labels.manifest()
    zs = _predict(labels, new_vecs, options.batch)
    # neighbours of the new images, then the earlier lists they enter
    nbr_ids, nbr_sc = _search(engine, new_vecs, new_ids, k, options.batch, bar)
    report.searched = len(new_ids)
    ref_idx, ref_p = (
        reference_scores(ref, engine.model.logit_scale, new_vecs) if ref is not None else _no_ref(len(new_ids))
    )
    merged = {
        "ids": np.concatenate([arrays["ids"], new_ids]),
        "fp": np.concatenate([arrays["fp"], new_fp]),
        "nbr_ids": np.concatenate([arrays["nbr_ids"], nbr_ids]),
        "nbr_sc": np.concatenate([arrays["nbr_sc"], nbr_sc]),
        "zs_idx": np.concatenate([arrays["zs_idx"], zs[0]]),
        "zs_p": np.concatenate([arrays["zs_p"], zs[1]]),
        "label_cos": np.concatenate([arrays["label_cos"], zs[2]]),
        "ref_idx": np.concatenate([arrays["ref_idx"], ref_idx]),
        "ref_p": np.concatenate([arrays["ref_p"], ref_p]),
    }
    order = np.argsort(merged["ids"], kind="stable")
    merged = {name: a[order] for name, a in merged.items()}
    state = CurationState({}, merged)
    n_old = len(arrays["ids"])
    if prev is not None and n_old:
        report.lists_updated = _offer_new(engine, state, new_ids, new_vecs, options)
        _research_lists_with(engine, snap, state, gone, options)
    if relabel and prev is not None and labels is not None:
        _repredict_all(snap, state, labels, options)
        report.predicted = len(state.ids)
    else:
        report.predicted = len(new_ids)
    report.labels = 0 if labels is None else len(labels.taxa)
    model = engine.collection.model
    state.manifest = {
        "generation": snap.generation.number,
        "segments": sorted(s.n for s in snap.generation.segments),
        "deletes": sorted(snap.generation.deletes),
        "model": {"source": model.get("source"), "revision": model.get("revision"), "name": model.get("name")},
        "k": k,
        "labels": None if labels is None else labels.manifest(),
        "reference_path": options.reference_labels,
        "reference": None
        if ref is None
        else {**describe_reference(ref), "names": reference_names(ref, state.arrays["ref_idx"])},
        "computed_at": utc_stamp(),
        "images": int(len(state.ids)),
    }
    return state


def _empty(d: int, k: int) -> dict[str, np.ndarray]:
    return {
        "ids": np.empty(0, np.int64),
        "fp": np.empty(0, np.int64),
        "nbr_ids": np.empty((0, k), np.int64),
        "nbr_sc": np.empty((0, k), np.float32),
        "zs_idx": np.empty((0, len(RANKS), TOP), np.int32),
        "zs_p": np.empty((0, len(RANKS), TOP), np.float32),
        "label_cos": np.empty(0, np.float32),
        "ref_idx": np.empty((0, TOP), np.int32),
        "ref_p": np.empty((0, TOP), np.float32),
    }


def _no_ref(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, TOP), -1, np.int32), np.zeros((n, TOP), np.float32)


def _live_ids(snap: Any, engine: Any) -> np.ndarray:
    return np.sort(np.asarray(engine.selected_ids(None), dtype=np.int64))


def _labels(engine: Any, store: CurationStore, n: int) -> LabelSet | None:
    if n == 0:
        return None
    try:
        return label_set(engine, store)
    except CurationError as exc:
        log.warning("no zero-shot predictions: %s", exc)
        return None


def _reference(engine: Any, options: CurateOptions) -> Any:
    if options.reference_labels is None:
        return None
    from bioclip.reference import load_reference_labels

    source = str(engine.collection.model.get("source") or "")
    path = None if options.reference_labels == "cache" else os.path.expanduser(options.reference_labels)
    return load_reference_labels(source, path, dimension=engine.collection.dimension)


def _predict(labels: LabelSet | None, vecs: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(vecs)
    if labels is None:
        return (
            np.full((n, len(RANKS), TOP), -1, np.int32),
            np.zeros((n, len(RANKS), TOP), np.float32),
            np.zeros(n, np.float32),
        )
    parts = [score_images(labels, vecs[lo : lo + batch]) for lo in range(0, max(n, 1), batch)]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def _offer_new(engine: Any, state: CurationState, new_ids: np.ndarray, new_vecs: np.ndarray, options) -> int:
    """Offer each new image to the lists of its 3k nearest images (see the module docstring)."""
    if not len(new_ids):
        return 0
    m = 3 * options.k
    sc_all, nb_all = [], []
    for lo in range(0, len(new_ids), options.batch):
        sc, nb = engine.knn(new_vecs[lo : lo + options.batch], m + 1)
        sc_all.append(sc)
        nb_all.append(nb)
    sc, nb = np.concatenate(sc_all), np.concatenate(nb_all)
    owner = np.repeat(new_ids, nb.shape[1])
    nb, sc = nb.reshape(-1), sc.reshape(-1)
    rows = state.rows(nb)
    ok = (rows >= 0) & (nb != owner) & ~member(nb, np.sort(new_ids))
    rows, owner, sc = rows[ok], owner[ok], sc[ok]
    kth = state.arrays["nbr_sc"][rows, -1]
    better = sc > kth
    return merge_lists(state.arrays["nbr_ids"], state.arrays["nbr_sc"], rows[better], (owner[better], sc[better]))


def _research_lists_with(engine: Any, snap: Any, state: CurationState, gone: np.ndarray, options) -> None:
    """Search again the lists that held a retired or changed image."""
    if not gone.size:
        return
    hit = member(state.arrays["nbr_ids"].reshape(-1), gone).reshape(state.arrays["nbr_ids"].shape).any(axis=1)
    rows = np.flatnonzero(hit)
    if not rows.size:
        return
    ids = state.ids[rows]
    vecs = snap.get_vectors(ids)
    nb, sc = _search(engine, vecs, ids, options.k, options.batch)
    state.arrays["nbr_ids"][rows], state.arrays["nbr_sc"][rows] = nb, sc


def _repredict_all(snap: Any, state: CurationState, labels: LabelSet, options) -> None:
    """The collection's taxa changed: every image's zero-shot scores again (neighbours stay)."""
    for lo in range(0, len(state.ids), options.batch):
        ids = state.ids[lo : lo + options.batch]
        idx, p, cos = score_images(labels, snap.get_vectors(ids))
        state.arrays["zs_idx"][lo : lo + len(ids)] = idx
        state.arrays["zs_p"][lo : lo + len(ids)] = p
        state.arrays["label_cos"][lo : lo + len(ids)] = cos
