"""What bench/query.py judges its text queries with: the stored vectors, and recall of the engine's
text results against exact search over them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

K = 10


def text_recall(engine, texts: list[str], stored: tuple[np.ndarray, np.ndarray]) -> list[float]:
    """[recall@10 of the engine's text results against exact search over the stored vectors, the
    same at the image-tuned parameters]: each query's vector is the one the engine searched
    (``SearchEngine.query_vector``). The random text tower's vectors mean nothing, but they sit far
    from every image, as real text queries do, and the index was tuned on the same tower's phrases."""
    from indexer import ann

    ids, vecs = stored
    qvecs = np.stack([engine.query_vector(t)[0] for t in texts])
    truth = ann.exact_search(vecs, ids, qvecs, K)[1]

    def found(kind: str) -> np.ndarray:
        rows = [[h.id for h in engine.search(t, k=K, kind=kind).hits] for t in texts]
        return np.array([r + [-1] * (K - len(r)) for r in rows])

    return [ann.recall_at_k(found("text"), truth, K), ann.recall_at_k(found("image"), truth, K)]


def stored_vectors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, float16 vectors (n, d)) of the collection: the ground truth's data."""
    from indexer.store import Collection

    snap = Collection.open(path).snapshot()
    ids, vecs = [], []
    for i, v in snap.iter_vectors():
        ids.append(i)
        vecs.append(np.asarray(v))
    return np.concatenate(ids), np.concatenate(vecs)
