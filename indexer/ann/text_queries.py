"""A collection's text tuning queries: its own taxa in the forms the engine sends, and a fixed
vocabulary of generic biological phrases, embedded once with the collection's model and cached.

Phrases (:func:`collection_phrases`):

* For a sample of the collection's taxa at every rank (up to ``TAXA_PER_RANK`` per rank, picked by
  a hash of the lineage, so the pick stays the same as the collection grows and only new picks are
  embedded): BioCLIP's taxonomic + common-name prompt, which is what the search engine sends for a
  taxon query ("a photo of Animalia Chordata Aves Passeriformes Corvidae Corvus corax with common
  name common raven."), and the free-text forms a user types (the scientific name, the common name).
* The vocabulary ``indexer/ann/data/tuning_phrases.txt`` (158 phrases, written for this project;
  see its header), for every collection, labelled or not.

The vectors are cached in ``COLLECTION/tuning/text-queries.npz`` (phrases, float16 vectors, the
model they were embedded with), so a ``reindex`` embeds nothing unless new taxa were picked; a
cache of another model is ignored. The cache is derived data: deleting it costs one embedding pass.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from indexer.ann.tuning_set import KindQueries
from indexer.errors import EmptyTuningSetError, TuningSetError
from indexer.store.files import atomic_write_bytes
from indexer.store.schema import RANK_COLUMNS, RANKS

__all__ = [
    "vocabulary",
    "collection_phrases",
    "PhraseCache",
    "text_tuning_queries",
    "TAXA_PER_RANK",
    "CACHE_FILE",
]

log = logging.getLogger(__name__)

TAXA_PER_RANK = 60
CACHE_FILE = "tuning/text-queries.npz"
_VOCABULARY = "tuning_phrases.txt"


def vocabulary() -> list[str]:
    """The generic phrases, one per non-comment line of the packaged file."""
    text = resources.files("indexer.ann").joinpath("data").joinpath(_VOCABULARY).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def _taxa(con: Any) -> list[tuple[int, tuple[str | None, ...], str | None]]:
    """(rank index, lineage down to that rank, most frequent common name) of every taxon in the
    ``images`` relation of ``con``; rows with only a scientific name give genus and epithet."""
    cols = ", ".join(f'"{c}"' for c in RANK_COLUMNS)
    rows = con.execute(
        f'SELECT {cols}, "scientificName", "vernacularName", count(*) FROM images GROUP BY ALL'
    ).fetchall()
    taxa: dict[tuple[int, tuple], Counter] = {}
    for row in rows:
        lineage = [(v.strip() or None) if isinstance(v, str) else None for v in row[: len(RANK_COLUMNS)]]
        sci, common, count = row[len(RANK_COLUMNS)], row[len(RANK_COLUMNS) + 1], int(row[-1])
        if lineage[5] is None and isinstance(sci, str) and sci.split():
            words = sci.split()
            lineage[5] = words[0]
            if len(words) > 1 and words[1].islower():
                lineage[6] = words[1]
        if lineage[6] is not None and lineage[5] is None:
            lineage[6] = None  # an epithet needs its genus
        filled = [i for i, v in enumerate(lineage) if v is not None]
        if not filled:
            continue
        lowest = filled[-1]
        for i in filled:
            key = (i, tuple(v.casefold() if v else None for v in lineage[: i + 1]))
            names = taxa.setdefault(key, Counter())
            if i == lowest and isinstance(common, str) and common.strip():
                names[(tuple(lineage[: i + 1]), common.strip())] += count
            else:
                names[(tuple(lineage[: i + 1]), None)] += 0
    out = []
    for (i, _), names in taxa.items():
        lineage_shown = next(iter(names))[0]
        commons = [(c, n) for (_, c), n in names.items() if c]
        common = max(commons, key=lambda cn: (cn[1], cn[0]))[0] if commons else None
        out.append((i, lineage_shown, common))
    return out


def collection_phrases(con: Any, per_rank: int = TAXA_PER_RANK) -> tuple[list[str], int]:
    """(phrases, taxa they come from): for up to ``per_rank`` taxa of each rank of the collection
    (``images`` in ``con``), the engine's taxonomic + common-name prompt, the scientific name and the
    common name; then the vocabulary. Duplicates are dropped, the order is stable."""
    from bioclip.taxa import Taxon, TextForm, taxon_prompt

    by_rank: dict[int, list[tuple[int, tuple, str | None]]] = {}
    for i, lineage, common in _taxa(con):
        by_rank.setdefault(i, []).append((_hash(repr((i, lineage))), lineage, common))
    phrases: list[str] = []
    picked = 0
    for i in sorted(by_rank):
        for _, lineage, common in sorted(by_rank[i])[:per_rank]:
            values = dict(zip(("kingdom", "phylum", "class_", "order", "family", "genus", "species"), lineage))
            try:
                taxon = Taxon(**values, common_name=common)
            except ValueError:  # a lineage BioCLIP's forms cannot express (e.g. an epithet alone)
                continue
            form = TextForm.TAXONOMIC_COMMON if common else TextForm.TAXONOMIC
            name = f"{lineage[5]} {lineage[6]}" if RANKS[i] == "species" else str(lineage[i])
            phrases += [taxon_prompt(taxon, form), name] + ([common] if common else [])
            picked += 1
    phrases += vocabulary()
    return list(dict.fromkeys(phrases)), picked


class PhraseCache:
    """Embedded phrases kept in a collection (``COLLECTION/tuning/text-queries.npz``), per model."""

    def __init__(self, collection_path: str | Path, model_record: dict):
        self.path = Path(collection_path) / CACHE_FILE
        self.model = json.dumps(
            {k: model_record.get(k) for k in ("source", "pretrained", "revision", "dimension")}, sort_keys=True
        )

    def load(self) -> dict[str, np.ndarray]:
        """phrase -> float16 vector; empty when there is no cache or it is another model's or unreadable."""
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if str(z["model"]) != self.model:
                    log.info("the text tuning cache %s is another model's; ignoring it", self.path)
                    return {}
                return dict(zip((str(p) for p in z["phrases"]), z["vectors"]))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError) as exc:  # derived data: embed again
            log.warning("cannot read the text tuning cache %s (%s); embedding again", self.path, exc)
            return {}

    def save(self, vectors: dict[str, np.ndarray]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        phrases = list(vectors)
        d = next(iter(vectors.values())).shape[-1] if vectors else 0
        arr = np.stack([vectors[p] for p in phrases]).astype(np.float16) if phrases else np.zeros((0, d), np.float16)
        np.savez(buf, phrases=np.array(phrases, dtype=str), vectors=arr, model=np.array(self.model))
        atomic_write_bytes(self.path, buf.getvalue(), durable=False)


def text_tuning_queries(
    con: Any,
    cache: PhraseCache,
    embed: Callable[[list[str]], np.ndarray] | None,
) -> KindQueries | None:
    """The collection's text tuning queries: phrases from ``con`` (see :func:`collection_phrases`),
    vectors from ``cache``, the missing ones embedded with ``embed(phrases) -> (m, d)`` (the
    collection's model; it raises TuningSetError when there is none) and saved back. Without a
    model, the cached ones only (None when there are none: the caller says that text queries
    could not be tuned)."""
    phrases, n_taxa = collection_phrases(con)
    stored = cache.load()
    missing = [p for p in phrases if p not in stored]
    if missing and embed is not None:
        log.info("embedding %d text tuning phrases (%d cached)", len(missing), len(phrases) - len(missing))
        try:
            vecs = np.asarray(embed(missing), dtype=np.float32)
        except TuningSetError as exc:  # no model at hand: what is cached will do
            log.warning("%s", exc)
        else:
            stored.update(zip(missing, vecs.astype(np.float16)))
            cache.save({p: stored[p] for p in phrases})
            missing = []
    have = [p for p in phrases if p in stored]
    if not have:
        return None
    if missing:
        log.warning("%d of %d text tuning phrases are not embedded yet (no model at hand)", len(missing), len(phrases))
    vecs = np.stack([stored[p] for p in have]).astype(np.float32)
    taxa_words = f"{n_taxa} of the collection's taxa (taxonomic + common-name prompts, scientific and common names)"
    try:
        return KindQueries.of(vecs, f"text phrases: {taxa_words} and {len(vocabulary())} generic phrases", "collection")
    except EmptyTuningSetError:  # pragma: no cover - the vocabulary is never empty
        return None
