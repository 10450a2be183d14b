"""What a curation run computes (:class:`CurateOptions`) and the documented defaults of its lists."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CurateOptions", "ListOptions", "KINDS", "DUPLICATE_COSINE", "NEIGHBOURS"]

#: The lists a curator gets.
KINDS = ("misidentified", "unidentified", "duplicates", "outliers")

#: Images whose vectors have at least this cosine are near-duplicates (the same specimen re-imaged,
#: a crop, a recompressed copy). BioCLIP puts different specimens of one species at ~0.8-0.93 and
#: re-encoded copies of one image above 0.98; 0.97 keeps re-shot specimens and leaves out siblings.
DUPLICATE_COSINE = 0.97
#: Neighbours kept per image (the vote and the candidate duplicate pairs).
NEIGHBOURS = 10


@dataclass(frozen=True)
class CurateOptions:
    """How the derived data is computed.

    ``k``: neighbours per image (from the ANN index); ``reference_labels``: a path of the
    Tree-of-Life species embeddings (``txt_emb_species.npy`` + ``.json``), or ``"cache"`` for an
    existing Hugging Face cache, or None (only the collection's own taxa); ``batch``: images scored
    at a time; ``full``: recompute everything instead of bringing the data up to date.
    """

    k: int = NEIGHBOURS
    reference_labels: str | None = None
    batch: int = 16_384
    full: bool = False
    progress: bool = False


@dataclass(frozen=True)
class ListOptions:
    """What a list shows.

    ``rank``: compare labels down to this rank (misidentified) / suggest no deeper (unidentified);
    ``min_confidence``: the least score (misidentified, outliers) or combined confidence
    (unidentified) of an entry; None takes each kind's default (:data:`DEFAULT_CONFIDENCE`);
    ``duplicate_cosine``: the near-duplicate threshold; ``filters``: as in search (``--where``,
    ``taxon=``); ``include_decided``: also entries a curator has accepted or rejected.
    """

    rank: str = "species"
    min_confidence: float | None = None
    duplicate_cosine: float = DUPLICATE_COSINE
    filters: tuple[str, ...] = ()
    include_decided: bool = False
    limit: int | None = None


#: Each kind's default least confidence (see docs/CURATION.md for what each score means).
DEFAULT_CONFIDENCE = {"misidentified": 0.5, "unidentified": 0.8, "duplicates": 0.0, "outliers": 3.0}
