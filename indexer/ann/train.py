"""Training an index on a sample, within bounded memory, fast enough for 65,536+ inverted lists on a CPU.

FAISS trains an IVF coarse quantizer with k-means whose assignment step costs n_train x nlist x d per
iteration: at 65,536 lists and 40 training vectors per list that is days on a few cores. Here, from
``TWO_LEVEL_MIN_NLIST`` lists on, the centroids come from two-level k-means (the route the FAISS
wiki suggests for large nlist, as ``faiss.contrib.clustering.two_level_clustering``): sqrt(nlist)
coarse clusters, then each split into sub-clusters in proportion to its size, so each iteration
costs about 2 sqrt(nlist) instead of nlist distance computations per vector. The sample is kept in
float16 and converted one coarse cluster at a time, so training memory is about
``n_train x d x 2`` bytes plus the largest cluster in float32.

A pre-transform (OPQ) is trained first on at most ``CODEBOOK_SAMPLE`` vectors and applied to the
sample block by block; the vector codec (PQ, SQ) is trained on the residuals of at most
``CODEBOOK_SAMPLE`` vectors (FAISS would subsample to 256 per centroid anyway).
:func:`pq_error` measures how well a trained index's codes reconstruct vectors (drift, OPQ choice).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from indexer.ann.exact import f32
from indexer.ann.layout import KMEANS_NITER, Layout
from indexer.errors import AnnError

__all__ = ["train_index", "two_level_centroids", "pq_error", "TWO_LEVEL_MIN_NLIST", "CODEBOOK_SAMPLE"]

log = logging.getLogger(__name__)

#: From this many lists on, the coarse centroids come from two-level k-means.
TWO_LEVEL_MIN_NLIST = 8192
#: Vectors the pre-transform and the codebooks are trained on, at most.
CODEBOOK_SAMPLE = 65_536
#: Points per centroid the first level trains on (FAISS's own default cap is 256).
LEVEL1_POINTS_PER_CENTROID = 256
_BLOCK = 65_536


def train_index(index: Any, sample: np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    """Train a FAISS index (as :func:`~indexer.ann.layout.new_faiss_index` made it) on ``sample``
    (n, d) float16/float32; returns what was done (for the index's info).

    Raises :class:`AnnError` when FAISS refuses (e.g. fewer training vectors than lists).
    """
    import faiss

    layout = Layout.of(index)
    n = sample.shape[0]
    if layout.kind != "ivf" or layout.leaf.nlist < TWO_LEVEL_MIN_NLIST or layout.refine is not None:
        try:
            index.train(f32(sample))
        except RuntimeError as exc:
            raise AnnError(f"cannot train the index on {n} vectors: {exc}") from exc
        return {"method": "faiss", "train_rows": n}
    rng = np.random.default_rng(seed)
    ivf = layout.leaf
    pre = [w for w in layout.wrappers if isinstance(w, faiss.IndexPreTransform)]
    x = sample
    for wrapper in pre:
        chain = [wrapper.chain.at(i) for i in range(wrapper.chain.size())]
        for vt in chain:
            sub = f32(x[_subsample(x.shape[0], CODEBOOK_SAMPLE, rng)])
            vt.train(sub)
            x = _apply_blocks(vt, x)
        wrapper.is_trained = True
    nlist = ivf.nlist
    if x.shape[0] < nlist:
        raise AnnError(f"cannot train {nlist} lists on {x.shape[0]} vectors: give at least one vector per list")
    spherical = ivf.metric_type == faiss.METRIC_INNER_PRODUCT
    centroids = two_level_centroids(x, nlist, spherical=spherical, seed=seed)
    quantizer = faiss.downcast_index(ivf.quantizer)
    quantizer.reset()
    quantizer.add(centroids)
    ivf.is_trained = quantizer.is_trained and quantizer.ntotal == nlist
    codec = f32(x[_subsample(x.shape[0], CODEBOOK_SAMPLE, rng)])
    try:
        ivf.train(codec)  # the quantizer holds nlist centroids: FAISS trains only the codec
    except RuntimeError as exc:
        raise AnnError(f"cannot train the vector codes on {codec.shape[0]} vectors: {exc}") from exc
    index.is_trained = True
    return {"method": "two-level k-means", "train_rows": n, "codebook_rows": int(codec.shape[0])}


def _subsample(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= size else np.sort(rng.choice(n, size=size, replace=False))


def _apply_blocks(vt: Any, x: np.ndarray) -> np.ndarray:
    """A vector transform applied block by block, into float16 (memory: one float32 block)."""
    out = np.empty((x.shape[0], vt.d_out), dtype=np.float16)
    for a in range(0, x.shape[0], _BLOCK):
        out[a : a + _BLOCK] = vt.apply(f32(x[a : a + _BLOCK]))
    return out


def _assign(index: Any, x: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape[0], dtype=np.int64)
    for a in range(0, x.shape[0], _BLOCK):
        out[a : a + _BLOCK] = index.search(f32(x[a : a + _BLOCK]), 1)[1][:, 0]
    return out


def _split(counts: np.ndarray, total: int) -> np.ndarray:
    """Sub-cluster counts proportional to ``counts``, summing to ``total``, each <= its count and
    >= 1 where the count is (largest remainders first)."""
    if counts.sum() < total:
        raise AnnError(f"cannot make {total} clusters from {counts.sum()} vectors")
    share = counts * (total / counts.sum())
    out = np.minimum(np.maximum(np.floor(share).astype(np.int64), (counts > 0).astype(np.int64)), counts)
    while out.sum() != total:
        if out.sum() < total:
            room = np.where(out < counts, share - out, -np.inf)
            out[int(np.argmax(room))] += 1
        else:
            room = np.where(out > 1, out - share, -np.inf)
            out[int(np.argmax(room))] -= 1
    return out


def two_level_centroids(x: np.ndarray, nlist: int, *, spherical: bool, seed: int = 0) -> np.ndarray:
    """nlist centroids (nlist, d) float32 of ``x`` (n, d) float16/float32 by two-level k-means.

    Level 1: sqrt(nlist) clusters trained on ``LEVEL1_POINTS_PER_CENTROID`` points each; every vector
    is assigned to one. Level 2: each cluster gets sub-clusters in proportion to its size (at least
    one, at most one per vector) and k-means runs on its own vectors. ``spherical`` normalises the
    centroids (inner-product indexes over normalised vectors).
    """
    import faiss

    n, d = x.shape
    rng = np.random.default_rng(seed)
    nc1 = max(1, min(int(round(math.sqrt(nlist))), nlist))
    sub = f32(x[_subsample(n, nc1 * LEVEL1_POINTS_PER_CENTROID, rng)])
    km1 = faiss.Kmeans(
        d,
        nc1,
        niter=KMEANS_NITER,
        spherical=spherical,
        seed=seed,
        max_points_per_centroid=LEVEL1_POINTS_PER_CENTROID,
    )
    km1.train(sub)
    del sub
    assign = _assign(km1.index, x)
    order = np.argsort(assign, kind="stable")
    counts = np.bincount(assign, minlength=nc1)
    per = _split(counts, nlist)
    log.info("two-level k-means: %d x ~%d clusters over %d vectors", nc1, nlist // nc1, n)
    parts = []
    start = 0
    for c in range(nc1):
        rows = np.sort(order[start : start + counts[c]])
        start += counts[c]
        k = int(per[c])
        if k == 0:
            continue
        pts = f32(x[rows])
        if k >= pts.shape[0]:
            parts.append(pts[:k])
            continue
        km = faiss.Kmeans(d, k, niter=KMEANS_NITER, spherical=spherical, seed=seed + 1 + c, max_points_per_centroid=256)
        km.train(pts)
        parts.append(km.centroids.reshape(k, d))
    centroids = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    if spherical:
        norms = np.linalg.norm(centroids, axis=1, keepdims=True)
        centroids /= np.maximum(norms, 1e-12)
    return centroids


def pq_error(index: Any, vectors: np.ndarray) -> float:
    """Median squared distance between vectors and their reconstruction from the index's codes
    (coarse centroid + code, through any pre-transform), or NaN when the index cannot say."""
    import faiss

    layout = Layout.of(index)
    if layout.kind != "ivf" or layout.refine is not None:
        return float("nan")
    x = f32(vectors)
    for wrapper in layout.wrappers:
        if isinstance(wrapper, faiss.IndexPreTransform):
            x = _apply_chain(wrapper, x)
    ivf = layout.leaf
    codes = ivf.sa_encode(x)
    back = ivf.sa_decode(codes)
    return float(np.median(np.sum((x - back) ** 2, axis=1)))


def _apply_chain(wrapper: Any, x: np.ndarray) -> np.ndarray:
    for i in range(wrapper.chain.size()):
        x = f32(wrapper.chain.at(i).apply(x))
    return x
