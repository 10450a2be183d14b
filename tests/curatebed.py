"""A test collection with known structure and planted errors, built from vectors (no images).

Random weights make image content meaningless, so the images here are vectors placed where the
tiny model's own text embeddings make the zero-shot scores carry signal:

1. The collection's 24 species (3 orders x 2 families x 2 genera x 2 species) are embedded with the
   model exactly as curation embeds them (BioCLIP's taxonomic text, OpenAI's 80 templates): T (24, d).
2. Species s gets the dual direction u_s = the s-th column of pinv(T), normalised: u_s . t_j is 0
   for every other species j, so softmax(logit_scale * x @ T.T) puts its mass on s. An image of s
   is unit(u_s + noise) (cosine ~0.9 between two images of one species, below the duplicate
   threshold).
3. Planted, with the truth returned: labels swapped to a sibling species, to a species of the other
   family of the order, and to a species of another order (a few percent each); images with no
   label and with only the order and family; near-duplicates at cosines 0.999, 0.985 and 0.975 (to
   be grouped) and 0.95 / 0.93 (not); outliers (random unit vectors, far from every species).

The collection is written through the embeddings import (Parquet ``uuid`` + ``emb`` + ranks), as a
user imports TreeOfLife-200M-Embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ORDERS = ("Coleoptera", "Lepidoptera", "Diptera")
RANK_NAMES = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


def species_lineages() -> list[tuple[str, ...]]:
    out = []
    for o in ORDERS:
        for f in range(2):
            fam = f"{o[:5]}{'ab'[f]}idae"
            for g in range(2):
                genus = f"{o[:3]}{'ab'[f]}{'xy'[g]}us"
                for s in range(2):
                    out.append(("Animalia", "Arthropoda", "Insecta", o, fam, genus, f"{genus} {'vw'[s]}ulgaris"))
    return out


@dataclass
class Bed:
    path: Path
    lineages: list[tuple[str, ...]]
    true_species: np.ndarray  # per row: index into lineages (-1: outlier)
    uuids: list[str]
    swapped: dict[str, tuple[int, str]] = field(default_factory=dict)  # uuid -> (true species, rank of the swap)
    unlabelled: dict[str, int] = field(default_factory=dict)  # uuid -> true species (no label)
    partial: dict[str, int] = field(default_factory=dict)  # uuid -> true species (order+family only)
    dup_pairs: dict[float, tuple[str, str]] = field(default_factory=dict)  # cosine -> pair
    outliers: list[str] = field(default_factory=list)
    vectors: np.ndarray | None = None

    def id_of(self, engine) -> dict[str, int]:
        """uuid -> image id (imported rows keep their uuid as key)."""
        ids = engine.selected_ids(None)
        return {h.get("key") or h.location: h.id for h in engine.get(list(ids))}


def _taxa(lineages):
    from bioclip.taxa import Taxon

    return [
        Taxon(kingdom=k, phylum=p, class_=c, order=o, family=f, genus=g, species=s.split()[1])
        for k, p, c, o, f, g, s in lineages
    ]


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def place(model, per_species: int = 30, seed: int = 0):
    """(lineages, text embeddings (24, d), image vectors (n, d), their species) of the clean part:
    unit(0.3 t_s + u_s + 0.4 noise outside the text span + 0.15 noise inside it) (see the module
    docstring): zero-shot top-1 ~0.85 at species, ~0.87 cosine between images of one species, ~0.28
    cosine to their own label (BioCLIP's images sit at 0.2-0.35 from their text)."""
    from bioclip.taxa import TextForm

    lineages = species_lineages()
    text = model.embed_taxa(_taxa(lineages), form=TextForm.TAXONOMIC_COMMON, ensemble=True)
    dual = _unit(np.linalg.pinv(text).T)  # row s: . t_j = 0 for j != s
    rng = np.random.default_rng(seed)
    species = np.repeat(np.arange(len(lineages)), per_species)
    vecs = 0.3 * text[species] + dual[species]
    vecs += 0.4 * _unit(_outside(text, rng.standard_normal(vecs.shape)))
    g = rng.standard_normal(vecs.shape)
    vecs += 0.15 * _unit(g - _outside(text, g))
    return lineages, text, _unit(vecs).astype(np.float32), species


def _outside(text: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``g`` less its part in the span of the text embeddings."""
    q, _ = np.linalg.qr(text.T)
    return g - (g @ q) @ q.T


def build_bed(root: Path, model, *, per_species: int = 30, seed: int = 0, pictures: bool = False) -> Bed:
    """The bed at ``root/bed.collection``; ``pictures``: a generated picture per image (beside the
    embeddings, as its location), for pages that show images (content meaningless)."""
    from indexer.build.importers import DeclaredModel, import_embeddings

    lineages, text, vecs, species = place(model, per_species, seed)
    rng = np.random.default_rng(seed + 1)
    n = len(vecs)
    labels = [list(lineages[s]) for s in species]
    uuids = [f"img-{i:05d}" for i in range(n)]
    bed = Bed(root / "bed.collection", lineages, species.copy(), uuids)
    order = rng.permutation(n)
    cursor = 0

    def take(m):
        nonlocal cursor
        out = order[cursor : cursor + m]
        cursor += m
        return out

    for rank, m in (("species", 12), ("family", 12), ("order", 12)):
        for i in take(m):
            s = int(species[i])
            o, f, g = s // 8, (s // 4) % 2, (s // 2) % 2
            if rank == "species":
                wrong = s ^ 1
            elif rank == "family":
                wrong = o * 8 + (1 - f) * 4 + g * 2 + (s % 2)
            else:
                wrong = ((o + 1) % 3) * 8 + (s % 8)
            labels[i] = list(lineages[wrong])
            bed.swapped[uuids[i]] = (s, rank)
    for i in take(20):
        labels[i] = [None] * 7
        bed.unlabelled[uuids[i]] = int(species[i])
    for i in take(20):
        labels[i] = list(lineages[species[i]][:5]) + [None, None]
        bed.partial[uuids[i]] = int(species[i])
    extra_vecs, extra_labels = [], []
    for cos in (0.999, 0.985, 0.975, 0.95, 0.93):
        i = int(take(1)[0])
        if uuids[i] in bed.swapped or uuids[i] in bed.unlabelled:
            continue
        v = vecs[i]
        r = _unit(rng.standard_normal(v.shape)).astype(np.float32)
        r = _unit(r - (r @ v) * v)
        w = cos * v + np.sqrt(1 - cos**2) * r
        extra_vecs.append(w)
        extra_labels.append(labels[i])
        uid = f"dup-{int(cos * 1000)}"
        uuids.append(uid)
        bed.dup_pairs[cos] = (uuids[i], uid)
    for j in range(8):
        # a blank or damaged image: far from every species and every label
        extra_vecs.append(_unit(_outside(text, rng.standard_normal(vecs.shape[1]))).astype(np.float32))
        extra_labels.append(list(lineages[j * 3]))
        uid = f"odd-{j}"
        uuids.append(uid)
        bed.outliers.append(uid)
    all_vecs = np.concatenate([vecs, np.stack(extra_vecs)]).astype(np.float32)
    labels += extra_labels
    bed.true_species = np.concatenate([species, np.full(len(extra_vecs), -1)])
    bed.vectors = all_vecs
    write_parquet(root / "emb" / "part-00000.parquet", uuids, all_vecs, labels, pictures=pictures)
    import_embeddings(bed.path, [str(root / "emb")], model=DeclaredModel(model=model))
    return bed


def write_parquet(path: Path, uuids, vecs: np.ndarray, labels, *, pictures: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    n, d = vecs.shape
    cols: dict[str, pa.Array] = {"uuid": pa.array(uuids)}
    if pictures:
        from imagegen import picture

        (path.parent / "pics").mkdir(exist_ok=True)
        for i, u in enumerate(uuids):
            picture(i).save(path.parent / "pics" / f"{u}.png")
        cols["path"] = pa.array([str(path.parent / "pics" / f"{u}.png") for u in uuids])
    for j, rank in enumerate(RANK_NAMES):
        cols[rank] = pa.array([lab[j] for lab in labels], pa.string())
    cols["catalogNumber"] = pa.array([f"CAT-{u}" for u in uuids])
    cols["institutionCode"] = pa.array(["NHM" if i % 2 else "MNHN" for i in range(n)])
    cols["occurrenceID"] = pa.array([f"urn:occ:{u}" for u in uuids])
    offsets = pa.array(np.arange(0, n * d + 1, d, dtype=np.int32))
    cols["emb"] = pa.ListArray.from_arrays(offsets, pa.array(vecs.reshape(-1), pa.float32()))
    pq.write_table(pa.table(cols), path)
