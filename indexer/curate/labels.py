"""Zero-shot predictions of every image over the collection's own taxa (and optionally the Tree of Life).

The method is pybioclip's, reused from :mod:`bioclip`: the collection's species (its lowest named
taxa, as :class:`indexer.search.taxonomy.Taxonomy` lists them) are written in BioCLIP's taxonomic +
common-name form and embedded through OpenAI's 80 templates (``ClipModel.embed_taxa(ensemble=True)``);
probabilities are ``softmax(logit_scale * x @ W)`` (:func:`bioclip.predict.probabilities`) and a
higher rank's probability is the sum over its species, grouped by the whole lineage prefix
(:func:`bioclip.zeroshot.aggregate_to_rank`). Label embeddings are computed once per model and
taxon text and kept in the collection's ``curation/`` folder.

With reference labels (``txt_emb_species.npy`` + ``.json``, found by
:func:`bioclip.reference.load_reference_labels`: a local path or an existing Hugging Face cache,
never downloaded), each image's three most likely Tree-of-Life species are kept as well.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.curate.store import CurationStore
from indexer.errors import CurationError
from indexer.store.schema import RANKS

__all__ = ["LabelSet", "label_set", "score_images", "reference_scores", "TOP"]

log = logging.getLogger(__name__)

#: Taxa kept per rank and image (top-5 accuracy needs five).
TOP = 5
#: The text recipe, part of the cache key: change it and every label is embedded again.
TEXT_RECIPE = "taxonomic+common/openai-80-templates/v1"


@dataclass
class LabelSet:
    """The species scored (``taxa``, bioclip Taxon values), their (L, d) embeddings, the model's
    logit scale, and per rank the group names (display) and keys (case-folded name at that rank)."""

    taxa: list
    embeddings: np.ndarray
    logit_scale: float
    leaf_rank: str
    groups: dict[str, list[str]]
    digest: str

    def manifest(self) -> dict[str, Any]:
        return {"leaf_rank": self.leaf_rank, "groups": self.groups, "text": self.digest, "labels": len(self.taxa)}


def _model_key(model: Any) -> str:
    spec = getattr(model, "spec", None)
    parts = [str(getattr(spec, "source", "") or ""), str(getattr(model, "revision", "") or ""), TEXT_RECIPE]
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=8).hexdigest()


def group_name(taxon: Any, rank: str) -> str:
    """A taxon's display name at ``rank`` (a binomial for species)."""
    if rank == "species":
        return f"{taxon.genus or ''} {taxon.species or ''}".strip()
    return str(getattr(taxon, "class_" if rank == "class" else rank) or "")


def label_set(engine: Any, store: CurationStore, *, progress: bool = False) -> LabelSet:
    """The collection's species and their text embeddings (computed for the taxa the cache lacks)."""
    from bioclip.taxa import TextForm, taxon_text

    taxonomy = engine.taxonomy
    leaf = next((r for r in reversed(RANKS) if taxonomy.taxa(r)), None)
    if leaf is None:
        raise CurationError(
            f"{engine.collection.path} names no taxa: zero-shot predictions need labelled images "
            "(a labels CSV, Darwin Core names); duplicates and outliers need none"
        )
    taxa = []
    for m in taxonomy.taxa(leaf):
        try:
            taxa.append(m.taxon())
        except ValueError:  # a lineage bioclip cannot write as text (an epithet without its genus)
            continue
    if not taxa:
        raise CurationError(f"the taxa of {engine.collection.path} at rank {leaf} cannot be written as text")
    model = engine.model
    digest = _model_key(model)
    cache = store.text_cache(digest)
    texts = [taxon_text(t, TextForm.TAXONOMIC_COMMON) for t in taxa]
    missing = sorted({t for t in texts if t not in cache})
    if missing:
        log.info("embedding %d taxa (80 templates each) with the collection's model", len(missing))
        step = 64
        for i in range(0, len(missing), step):
            part = missing[i : i + step]
            cache.update(zip(part, model.embed_text_ensemble(part)))
        store.save_text_cache(digest, cache)
    emb = np.stack([cache[t] for t in texts]).astype(np.float32)
    from bioclip.zeroshot import aggregate_to_rank

    groups = {}
    for rank in RANKS[: RANKS.index(leaf) + 1]:
        names, _ = aggregate_to_rank(np.zeros((0, len(taxa)), dtype=np.float32), _at_least(taxa, rank), rank)
        groups[rank] = [group_name(t, rank) for t in names]
    return LabelSet(taxa, emb, float(model.logit_scale), leaf, groups, digest)


def _at_least(taxa: list, rank: str) -> list:
    """Taxa as aggregate_to_rank takes them: a taxon without a name at ``rank`` is grouped under an
    empty name there (its probability then counts for no taxon at that rank)."""
    from dataclasses import replace

    field = "class_" if rank == "class" else rank
    out = []
    for t in taxa:
        if getattr(t, field) is None:
            t = replace(t, **{field: "?"}) if rank != "species" else t
        out.append(t)
    return out


def score_images(labels: LabelSet, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top-5 group indexes (n, 7, 5) int32 (-1: none), their probabilities (n, 7, 5), the largest
    cosine to any label (n,)) for unit vectors (n, d)."""
    from bioclip.predict import probabilities
    from bioclip.zeroshot import aggregate_to_rank

    n = len(vectors)
    idx = np.full((n, len(RANKS), TOP), -1, dtype=np.int32)
    prob = np.zeros((n, len(RANKS), TOP), dtype=np.float32)
    if n == 0:
        return idx, prob, np.zeros(0, dtype=np.float32)
    x = np.asarray(vectors, dtype=np.float32)
    cos = x @ labels.embeddings.T
    probs = probabilities(x, labels.embeddings.T, labels.logit_scale)
    for r, rank in enumerate(RANKS[: RANKS.index(labels.leaf_rank) + 1]):
        _, agg = aggregate_to_rank(probs, _at_least(labels.taxa, rank), rank)
        t = min(TOP, agg.shape[1])
        top = np.argpartition(-agg, t - 1, axis=1)[:, :t] if agg.shape[1] > t else np.tile(np.arange(t), (n, 1))
        p = np.take_along_axis(agg, top, axis=1)
        order = np.argsort(-p, axis=1, kind="stable")
        idx[:, r, :t] = np.take_along_axis(top, order, axis=1)
        prob[:, r, :t] = np.take_along_axis(p, order, axis=1)
    return idx, prob, cos.max(axis=1).astype(np.float32)


def reference_scores(
    ref: Any, logit_scale: float, vectors: np.ndarray, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """(top-5 Tree-of-Life species indexes (n, 5), probabilities (n, 5)) over ``ref`` (a
    :class:`bioclip.reference.ReferenceLabels`), as pybioclip's species predictions."""
    from bioclip.predict import probabilities

    n = len(vectors)
    idx = np.full((n, TOP), -1, dtype=np.int32)
    prob = np.zeros((n, TOP), dtype=np.float32)
    w = np.asarray(ref.embeddings, dtype=np.float32)
    for lo in range(0, n, chunk):
        p = probabilities(vectors[lo : lo + chunk], w, logit_scale)
        t = min(TOP, p.shape[1])
        top = np.argpartition(-p, t - 1, axis=1)[:, :t]
        pv = np.take_along_axis(p, top, axis=1)
        order = np.argsort(-pv, axis=1, kind="stable")
        idx[lo : lo + len(p), :t] = np.take_along_axis(top, order, axis=1)
        prob[lo : lo + len(p), :t] = np.take_along_axis(pv, order, axis=1)
    return idx, prob


def reference_names(ref: Any, used: np.ndarray) -> dict[str, list[str]]:
    """index -> [kingdom .. genus, binomial] of the reference species in ``used`` (for the manifest)."""
    out = {}
    for j in np.unique(used[used >= 0]).tolist():
        names = ref.names[j]
        out[str(j)] = [*names[:6], f"{names[5]} {names[6]}".strip()]
    return out


def describe_reference(ref: Any) -> dict[str, Any]:
    return {"npy": ref.npy, "json": ref.json, "dataset": ref.dataset, "revision": ref.revision, "labels": len(ref)}


def _dumps(obj: Any) -> str:  # pragma: no cover - debugging aid
    return json.dumps(obj, indent=2)
