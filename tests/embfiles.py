"""Embedding files written the way their tools write them, for the import tests and the benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

#: (kingdom, phylum, class, order, family, genus, species as TreeOfLife writes it: a binomial)
TOL_TAXA = [
    ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "Corvus corax"),
    ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "Pica pica"),
    ("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Panthera", "Panthera leo"),
    ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Rosa", "Rosa canina"),
]
F16 = pa.float16()
RANK_NAMES = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


def raw_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Unnormalised float32 vectors (norms 5-20, like BioCLIP 2's raw outputs)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, d)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v * rng.uniform(5, 20, size=(n, 1)).astype(np.float32)


def tol_table(vectors: np.ndarray, *, start: int = 0, dtype=F16, fixed: bool = False) -> pa.Table:
    """A TreeOfLife-200M-Embeddings-shaped table: uuid, the seven ranks, source fields, emb."""
    n, d = vectors.shape
    taxa = [TOL_TAXA[(start + i) % len(TOL_TAXA)] for i in range(n)]
    cols: dict[str, pa.Array] = {"uuid": pa.array([f"uuid-{start + i:07d}" for i in range(n)])}
    for j, rank in enumerate(RANK_NAMES):
        cols[rank] = pa.array([t[j] for t in taxa])
    cols["img_type"] = pa.array(["Museum Specimen: Fungi" if i % 3 else "Citizen Science" for i in range(n)])
    cols["basisOfRecord"] = pa.array(["PRESERVED_SPECIMEN"] * n)
    cols["publisher"] = pa.array(["Natural History Museum" if i % 2 else "iNaturalist" for i in range(n)])
    cols["identifier"] = pa.array([f"https://images.example.org/{start + i}.jpg" for i in range(n)])
    flat = pa.array(vectors.astype(np.float16 if dtype == pa.float16() else np.float32).reshape(-1), dtype)
    if fixed:
        cols["emb"] = pa.FixedSizeListArray.from_arrays(flat, d)
    else:
        offsets = pa.array(np.arange(0, n * d + 1, d, dtype=np.int32))
        cols["emb"] = pa.ListArray.from_arrays(offsets, flat)
    return pa.table(cols)


def write_tol_shards(folder: Path, vectors: np.ndarray, shards: int, **kwargs) -> list[Path]:
    """``vectors`` split over ``shards`` Parquet files ``part-00000.parquet`` ... in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    bounds = np.linspace(0, len(vectors), shards + 1).astype(int)
    for s in range(shards):
        lo, hi = bounds[s], bounds[s + 1]
        path = folder / f"part-{s:05d}.parquet"
        pq.write_table(tol_table(vectors[lo:hi], start=int(lo), **kwargs), path, row_group_size=1000)
        paths.append(path)
    return paths


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
