"""A modality-gap testbed: image vectors in species-like clusters and text vectors that sit where
CLIP puts text, for tests and benchmarks of recall per query kind.

Random-weight test models give text embeddings no meaning, so query kinds are judged on vectors
with known structure instead. The design follows what CLIP-style models show (Liang et al., "Mind
the Gap", NeurIPS 2022; RoarGraph, VLDB 2024):

* **Images.** Seven-rank taxonomy reduced to three levels: families, genera within families,
  species within genera, with Pareto-skewed species sizes (a few common taxa, a long tail, as in a
  museum's holdings). A species centre is a shared "cone" direction (CLIP embeddings all lie in a
  narrow cone) plus its genus's and its own offsets; an image is its species centre plus semantic
  noise, all drawn on one decaying spectrum (variance ~ 1/i over a random rotation: a low intrinsic
  dimension), plus *style*: variation in a few directions of their own (lighting, background,
  mounting, camera) that no text describes. Style is what an image index partitions on along with
  the taxonomy, and it is why a text query's neighbours spread over many more inverted lists than
  an image query's.
* **Texts.** A text for a taxon (a species, genus or family) is ``offset * m + noise * n + signal
  * c``, normalised: ``m`` is one "modality offset" direction shared by every text (orthogonal to
  the cone and to the style directions, so it adds the same to every image's score: the gap),
  ``n`` per-text noise in the semantic subspace (two phrasings of one taxon differ), ``c`` the
  taxon's direction (the normalised mean of its species centres). A text therefore has cosine
  ~0.2-0.35 with its best images, against ~0.8-0.9 between image neighbours, and texts of
  different taxa have cosine ~0.7 with each other (they share the offset), as real CLIP texts do.
* **Mixed** queries are weighted sums of a text and an image, normalised, as the engine forms them.

:meth:`ModalityGapTestbed.statistics` measures the three figures the description promises (text ->
best image, image -> nearest other image, text <-> text of other taxa); the benchmarks print them.
Everything is deterministic for a seed; images are generated chunk by chunk into any array (a
float16 ``np.memmap`` of 1M x 768 included), so memory stays flat.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["ModalityGapTestbed", "RANKS"]

#: The taxon levels a text can name, lowest first.
RANKS = ("species", "genus", "family")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class ModalityGapTestbed:
    """Species-like clusters of image vectors and text vectors with a modality gap (see the module
    docstring). ``n_species`` species, ``per_genus`` species per genus, ``per_family`` genera per
    family; the remaining fields are the weights of the model's parts."""

    d: int = 512
    n_species: int = 1000
    seed: int = 0
    per_genus: int = 8
    per_family: int = 6
    genus_spread: float = 1.0
    species_spread: float = 0.6
    image_noise: float = 0.6
    style: float = 0.6
    style_dims: int = 16
    offset: float = 0.85
    text_noise: float = 0.45
    signal: float = 0.2

    def __post_init__(self) -> None:
        if self.d < 2 * self.style_dims + 2:
            raise ValueError(f"d={self.d} is too small for {self.style_dims} style directions")
        if self.n_species < 2:
            raise ValueError("a testbed needs at least two species")

    # -- the fixed parts (drawn once per testbed) --------------------------------------------------

    @functools.cached_property
    def _parts(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        d = self.d
        rotation = np.linalg.qr(rng.standard_normal((d, d)))[0]
        spectrum = np.arange(1, d + 1) ** -0.5
        basis = ((spectrum / np.linalg.norm(spectrum))[:, None] * rotation.T).astype(np.float32)
        # cone, modality offset and style directions: mutually orthogonal
        special = np.linalg.qr(rng.standard_normal((d, 2 + self.style_dims)))[0].T.astype(np.float32)
        cone, offset, style = special[0], special[1], special[2:]
        n_genera = max(1, -(-self.n_species // self.per_genus))
        n_families = max(1, -(-n_genera // self.per_family))
        families = rng.standard_normal((n_families, d)) @ basis
        genus_family = np.arange(n_genera) // self.per_family
        genera = 0.8 * families[genus_family] + 0.6 * (rng.standard_normal((n_genera, d)) @ basis)
        species_genus = np.arange(self.n_species) // self.per_genus
        centres = (
            0.8 * cone
            + self.genus_spread * genera[species_genus]
            + self.species_spread * (rng.standard_normal((self.n_species, d)) @ basis)
        ).astype(np.float32)
        sizes = rng.pareto(1.2, self.n_species) + 1.0
        return {
            "basis": basis,
            "offset": offset,
            "style": style,
            "centres": centres,
            "genus": species_genus,
            "family": genus_family[species_genus],
            "probs": sizes / sizes.sum(),
        }

    @property
    def species_probabilities(self) -> np.ndarray:
        """How likely an image is of each species (Pareto-skewed)."""
        return self._parts["probs"]

    def taxon_of(self, species: np.ndarray, rank: str) -> np.ndarray:
        """The taxon (index at ``rank``) each species belongs to."""
        species = np.asarray(species)
        if rank == "species":
            return species
        if rank not in RANKS:
            raise ValueError(f"unknown rank {rank!r}; use one of {RANKS}")
        return self._parts[rank][species]

    def taxa(self, rank: str) -> np.ndarray:
        """Every taxon index at ``rank``."""
        return np.unique(self.taxon_of(np.arange(self.n_species), rank))

    def directions(self, rank: str) -> np.ndarray:
        """(taxa at ``rank``, d): each taxon's direction, the normalised mean of its species centres."""
        if rank not in RANKS:
            raise ValueError(f"unknown rank {rank!r}; use one of {RANKS}")
        return self._directions[rank]

    @functools.cached_property
    def _directions(self) -> dict[str, np.ndarray]:
        out = {}
        for rank in RANKS:
            of = self.taxon_of(np.arange(self.n_species), rank)
            sums = np.zeros((int(of.max()) + 1, self.d), dtype=np.float64)
            np.add.at(sums, of, self._parts["centres"])
            out[rank] = _unit_rows(sums)
        return out

    # -- vectors -----------------------------------------------------------------------------------

    def images(
        self, n: int, *, stream: int = 0, out: np.ndarray | None = None, chunk: int = 65_536
    ) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (n, d), species (n,)): n image vectors, L2-normalised, written chunk by chunk
        into ``out`` when given (any float array of shape (n, d), e.g. a float16 memmap).
        ``stream`` picks an independent sequence (0: a collection, 1: held-out queries, ...)."""
        p = self._parts
        rng = np.random.default_rng([self.seed, 1, stream])
        if out is None:
            out = np.empty((n, self.d), dtype=np.float32)
        labels = np.empty(n, dtype=np.int64)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            sp = rng.choice(self.n_species, size=m, p=p["probs"])
            u = p["centres"][sp] + self.image_noise * (rng.standard_normal((m, self.d), dtype=np.float32) @ p["basis"])
            u = _unit_rows(u)
            u += (
                self.style
                * (rng.standard_normal((m, self.style_dims), dtype=np.float32) @ p["style"])
                / np.sqrt(self.style_dims)
            )
            out[start : start + m] = _unit_rows(u)
            labels[start : start + m] = sp
        return out, labels

    def texts(self, taxa: np.ndarray, rank: str = "species", *, stream: int = 0) -> np.ndarray:
        """(len(taxa), d) text vectors, one per entry of ``taxa`` (taxon indexes at ``rank``); each
        entry gets its own phrasing noise, so a taxon listed twice gets two different texts, and
        another ``stream`` gives other phrasings of the same taxa."""
        p = self._parts
        taxa = np.asarray(taxa, dtype=np.int64)
        rng = np.random.default_rng([self.seed, 2, stream])
        noise = _unit_rows(rng.standard_normal((taxa.size, self.d)) @ p["basis"])
        t = self.offset * p["offset"] + self.text_noise * noise + self.signal * self.directions(rank)[taxa]
        return _unit_rows(t)

    def text_queries(self, m: int, *, stream: int = 0, ranks: tuple[str, ...] = RANKS) -> np.ndarray:
        """m text vectors for taxa drawn as users name them: species in proportion to how common
        they are, and genera and families, in turn over ``ranks``."""
        rng = np.random.default_rng([self.seed, 3, stream])
        species = rng.choice(self.n_species, size=m, p=self._parts["probs"])
        which = np.arange(m) % len(ranks)
        out = np.empty((m, self.d), dtype=np.float32)
        for r, rank in enumerate(ranks):
            rows = np.flatnonzero(which == r)
            out[rows] = self.texts(self.taxon_of(species[rows], rank), rank, stream=stream * 16 + r)
        return out

    @staticmethod
    def mixed(texts: np.ndarray, images: np.ndarray, text_weights: np.ndarray | float = 2.0) -> np.ndarray:
        """Weighted combinations ``w * text + image``, normalised: the engine's combined queries."""
        w = np.broadcast_to(np.asarray(text_weights, dtype=np.float32).reshape(-1, 1), (len(texts), 1))
        return _unit_rows(w * np.asarray(texts, dtype=np.float32) + np.asarray(images, dtype=np.float32))

    # -- what it looks like ------------------------------------------------------------------------

    def statistics(self, images: np.ndarray, texts: np.ndarray, *, sample: int = 500) -> dict[str, float]:
        """Median cosines over a collection's ``images`` (n, d; a memmap is fine, read in chunks):
        of a text (rows of ``texts``) to its best image, of an image (``sample`` of them) to its
        nearest other image, of an image to a random other image, and of texts to each other."""
        from indexer.ann.exact import exact_search

        n = images.shape[0]
        rng = np.random.default_rng([self.seed, 4])
        rows = np.sort(rng.choice(n, size=min(sample, n), replace=False))
        ids = np.arange(n, dtype=np.int64)
        probe = np.asarray(images[rows], dtype=np.float32)
        best_image = exact_search(images, ids, probe, 1, excluded_ids=rows)[0][:, 0]
        # (excluding all sampled rows from each other's neighbours costs a little on the figure;
        # it keeps the one chunked pass over the collection)
        best_text = exact_search(images, ids, np.asarray(texts, dtype=np.float32), 1)[0][:, 0]
        pairs = probe @ probe.T
        tt = np.asarray(texts, dtype=np.float32) @ np.asarray(texts, dtype=np.float32).T
        return {
            "text_to_best_image": float(np.median(best_text)),
            "image_to_nearest_image": float(np.median(best_image)),
            "image_to_random_image": float(np.median(pairs[np.triu_indices(len(probe), 1)])),
            "text_to_text": float(np.median(tt[np.triu_indices(len(tt), 1)])) if len(tt) > 1 else float("nan"),
        }
