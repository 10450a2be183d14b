"""Structured queries: weighted combinations of text, taxa, images, indexed images and vectors.

A :class:`Query` is a tuple of weighted :class:`Term` s. Each term becomes one unit vector ``u_i``
in the collection's embedding space:

=========  =====================================================================================
kind       what it is and how it becomes a vector
=========  =====================================================================================
text       words. When they name a taxon of the collection (any rank, scientific or vernacular,
           any case) they are expanded to BioCLIP's taxonomic text ("a photo of Animalia Chordata
           Aves Passeriformes Corvidae Corvus corax with common name common raven."); otherwise
           they go to the text encoder as they are.
taxon      a taxon name that must resolve against the collection; one that does not is searched
           as free text, with a notice.
image      a picture (path, bytes or PIL image), embedded with the collection's preprocessing.
id         an indexed image's stored vector ("more like this"); the image itself is left out of
           the results.
vector     a raw vector of the collection's dimension (normalised here).
=========  =====================================================================================

The combination (the maths)
---------------------------
With weights ``w_i`` (negative for terms to move away from), the query vector is the normalised
weighted sum of the unit vectors::

    q = s / |s|,   s = sum_i w_i u_i

and an image ``x`` (a unit vector) scores ``cos(x, q) = sum_i w_i cos(x, u_i) / |s|``. Because
``|s|`` is the same for every image, the ranking is exactly the ranking by the weighted sum of the
per-term cosine similarities: "Corvus" + this photo - 0.5 "juvenile" ranks images by
``cos(x, Corvus) + cos(x, photo) - 0.5 cos(x, juvenile)``, and a single term of weight 1 is the
plain search for that term. Scores stay cosines in [-1, 1] (they are those of ``q``), so a minimum
score applies to a combination too.

Rules: weights are finite and non-zero; at least one is positive (a query of negative terms only
has no "towards"); terms that cancel out (``s`` close to 0) are an error. Note that CLIP image and
text vectors live in different regions of the space (the "modality gap"): an image's cosine to
another image is typically 0.5-1, to a text 0.2-0.35, so an image term outweighs a text term of
the same weight. Give text terms more weight (2-3) when they should count as much as a picture.

Python::

    from indexer.search.query import Query, Term
    q = Query.of(Term.text("Corvus"), Term.image("photo.jpg"), Term.text("juvenile", -0.5))
    q = Term.text("Corvus") + Term.image("photo.jpg") - 0.5 * Term.text("juvenile")   # the same

Command line (see ``bioclip-search --help``): the positional TEXT, repeatable ``--plus TEXT``,
``--minus TEXT``, ``--image PATH``, ``--id N``, ``--minus-image PATH``, ``--minus-id N``, and the
general ``--term KIND[:WEIGHT]=VALUE`` (``--term text:-0.5=juvenile``, ``--term image:2=photo.jpg``),
parsed by :func:`parse_term`.

Kinds: a query of text and taxon terms only is a ``text`` query, one of pictures, indexed images
and vectors only an ``image`` query, and one with both a ``mixed`` query (:attr:`Query.kind`); the
ANN index is searched with the parameters tuned for that kind (see :mod:`indexer.ann.tuning`).

Grouping (:class:`Grouping`) folds near-duplicates into one hit per group: the best-scoring hit of
a group stands for it and carries the others in ``Hit.group``. See :class:`Grouping` for the rule.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import QueryError
from indexer.media.localfs import _MAX_VECTOR_FILE, MAX_IMAGE_BYTES, read_query_file

__all__ = [
    "Term",
    "Query",
    "Grouping",
    "parse_term",
    "read_query_file",
    "MAX_IMAGE_BYTES",
    "TERM_KINDS",
    "RECORD_FIELDS",
]

TERM_KINDS: tuple[str, ...] = ("text", "taxon", "image", "id", "vector")
#: Record identity for grouping, in order of preference (see :class:`Grouping`).
RECORD_FIELDS: tuple[str, ...] = ("recordID", "occurrenceID", "catalogNumber")

_TERM = re.compile(r"^\s*(text|taxon|image|id|vector)\s*(?::\s*([^=]*?))?\s*=(.*)$", re.S | re.I)


@dataclass(frozen=True, eq=False)
class Term:
    """One weighted part of a query. Build with :meth:`text`, :meth:`taxon`, :meth:`image`,
    :meth:`id` or :meth:`vector`. ``-term``, ``0.5 * term`` and ``a + b`` / ``a - b`` (giving a
    :class:`Query`) are supported."""

    kind: str
    value: Any
    weight: float = 1.0
    label: str | None = None  # how the term is named in the interpretation (e.g. a file name)

    def __post_init__(self) -> None:
        if self.kind not in TERM_KINDS:
            raise QueryError(f"unknown query term kind {self.kind!r}; use one of {', '.join(TERM_KINDS)}")
        try:
            w = float(self.weight)
        except (TypeError, ValueError):
            raise QueryError(f"a term's weight must be a number, got {self.weight!r}") from None
        if isinstance(self.weight, bool) or not math.isfinite(w) or w == 0:
            raise QueryError(f"a term's weight must be a finite, non-zero number, got {self.weight!r}")
        object.__setattr__(self, "weight", w)
        if self.kind in ("text", "taxon"):
            if not isinstance(self.value, str):
                raise QueryError(f"a {self.kind} term needs text, got {type(self.value).__name__}")
            if not self.value.strip():
                raise QueryError("the search text is empty" if self.kind == "text" else "the taxon name is empty")
        elif self.kind == "id":
            if isinstance(self.value, bool) or not isinstance(self.value, (int, np.integer)):
                try:
                    object.__setattr__(self, "value", int(str(self.value).strip()))
                except ValueError:
                    raise QueryError(f"an image id is a whole number, got {self.value!r}") from None
            else:
                object.__setattr__(self, "value", int(self.value))
        elif self.kind == "vector":
            arr = np.asarray(self.value, dtype=np.float32).reshape(-1)
            object.__setattr__(self, "value", arr)
        elif self.value is None:
            raise QueryError("an image term needs a picture")

    # -- constructors --------------------------------------------------------------------

    @classmethod
    def text(cls, text: str, weight: float = 1.0) -> Term:
        return cls("text", text, weight)

    @classmethod
    def taxon(cls, name: str, weight: float = 1.0) -> Term:
        return cls("taxon", name, weight)

    @classmethod
    def image(cls, image: Any, weight: float = 1.0, label: str | None = None) -> Term:
        """A picture: a path (str / Path), bytes, or a PIL image."""
        if label is None and isinstance(image, (str, os.PathLike)):
            label = Path(image).name
        return cls("image", image, weight, label)

    @classmethod
    def id(cls, image_id: int, weight: float = 1.0) -> Term:
        return cls("id", image_id, weight)

    @classmethod
    def vector(cls, vector: Any, weight: float = 1.0, label: str | None = None) -> Term:
        return cls("vector", vector, weight, label)

    # -- arithmetic ----------------------------------------------------------------------

    def scaled(self, factor: float) -> Term:
        return Term(self.kind, self.value, self.weight * float(factor), self.label)

    def __neg__(self) -> Term:
        return self.scaled(-1.0)

    def __mul__(self, factor: float) -> Term:
        return self.scaled(factor)

    __rmul__ = __mul__

    def __add__(self, other: Term | Query) -> Query:
        return Query((self,)) + other

    def __sub__(self, other: Term | Query) -> Query:
        return Query((self,)) - other

    def describe(self) -> str:
        if self.kind in ("text", "taxon"):
            return f'{self.kind} "{self.value}"'
        if self.kind == "id":
            return f"image {self.value}"
        if self.kind == "image":
            return f"picture {self.label}" if self.label else "the uploaded picture"
        return self.label or "a vector"


@dataclass(frozen=True, eq=False)
class Query:
    """A weighted combination of terms (see the module docstring for the maths)."""

    terms: tuple[Term, ...] = ()

    def __post_init__(self) -> None:
        terms = tuple(self.terms)
        bad = [t for t in terms if not isinstance(t, Term)]
        if bad:
            raise QueryError(f"a query is made of Terms, not {type(bad[0]).__name__}")
        object.__setattr__(self, "terms", terms)

    @classmethod
    def of(cls, *terms: Term) -> Query:
        return cls(tuple(terms))

    @classmethod
    def text(cls, text: str, weight: float = 1.0) -> Query:
        return cls((Term.text(text, weight),))

    @classmethod
    def coerce(cls, value: Query | Term | str) -> Query:
        if isinstance(value, Query):
            return value
        if isinstance(value, Term):
            return cls((value,))
        if isinstance(value, str):
            return cls((Term.text(value),))
        raise QueryError(f"cannot search for a {type(value).__name__}; give text, a Term or a Query")

    def __add__(self, other: Term | Query) -> Query:
        return Query(self.terms + Query.coerce(other).terms)

    def __sub__(self, other: Term | Query) -> Query:
        return Query(self.terms + tuple(-t for t in Query.coerce(other).terms))

    def __neg__(self) -> Query:
        return Query(tuple(-t for t in self.terms))

    def __mul__(self, factor: float) -> Query:
        return Query(tuple(t.scaled(factor) for t in self.terms))

    __rmul__ = __mul__

    def __bool__(self) -> bool:
        return bool(self.terms)

    def __len__(self) -> int:
        return len(self.terms)

    def validate(self) -> None:
        """QueryError unless the query has a term and at least one positive weight."""
        if not self.terms:
            raise QueryError("the query is empty: give text, a picture, an image id or a vector")
        if all(t.weight < 0 for t in self.terms):
            raise QueryError("a query needs at least one term with a positive weight (something to search towards)")

    @property
    def kind(self) -> str:
        """The query's kind, whose tuned index parameters search it: ``text`` when every term is
        text or a taxon, ``image`` when every term is a picture, an indexed image or a vector,
        ``mixed`` when it combines both (text sits far from every image: the modality gap)."""
        words = [t.kind in ("text", "taxon") for t in self.terms]
        return "mixed" if any(words) and not all(words) else ("text" if words and all(words) else "image")

    @property
    def excluded_ids(self) -> tuple[int, ...]:
        """Ids of the indexed images the query is made of: never returned as results."""
        return tuple(int(t.value) for t in self.terms if t.kind == "id")


def combine(vectors: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """``sum_i w_i u_i`` normalised, as a (1, d) float32 row; ``vectors`` are the unit rows u_i.

    Raises QueryError when the weighted terms cancel out (norm below 1e-6 of the weights' sum)."""
    u = np.asarray(vectors, dtype=np.float32)
    w = np.asarray(weights, dtype=np.float32).reshape(-1, 1)
    s = (w * u).sum(axis=0, keepdims=True)
    norm = float(np.linalg.norm(s))
    if not math.isfinite(norm) or norm <= 1e-6 * float(np.abs(w).sum()):
        raise QueryError("the query's terms cancel each other out; change a weight or a term")
    return (s / norm).astype(np.float32)


@dataclass(frozen=True)
class Grouping:
    """How near-duplicates are folded into one hit (e.g. the same specimen photographed twice).

    Two hits are in the same group when

    - ``by_record``: they share a record identity, the first of these that the hits have:
      ``recordID``; else ``occurrenceID``; else ``catalogNumber`` together with
      ``institutionCode`` and ``collectionCode`` (a catalogue number is unique only within its
      institution's collection); images without any of these are never grouped by record; or
    - ``similarity``: the cosine between a hit's vector and the vector of the group's first
      (best-scoring) hit is at least this (0.95 is a good start for "the same picture again",
      resized or recompressed; None turns it off).

    Hits are taken in score order; each joins the first group (best first) it matches, else it
    starts a group. A group's first hit represents it; the others are in ``Hit.group``, best first.
    Paging (``offset``, ``k``) counts groups. Only hits within the searched depth (see
    ``max_candidates``) are grouped: ``SearchEngine.records_of`` lists every image of a record.
    """

    by_record: bool = True
    similarity: float | None = None
    max_candidates: int = 5000

    def __post_init__(self) -> None:
        if self.similarity is not None and not (-1.0 <= float(self.similarity) <= 1.0):
            raise QueryError(f"a grouping similarity is a cosine between -1 and 1, got {self.similarity!r}")
        if not self.by_record and self.similarity is None:
            raise QueryError("group by record, by similarity, or both")
        if self.max_candidates < 1:
            raise QueryError("max_candidates must be at least 1")

    @classmethod
    def coerce(cls, value: Grouping | bool | str | float | None) -> Grouping | None:
        """None/False: no grouping; True or "record": by record; "similar": by similarity 0.95;
        "both"; a float: by record and by that similarity; a Grouping as it is."""
        if value is None or value is False:
            return None
        if isinstance(value, Grouping):
            return value
        if value is True:
            return cls()
        if isinstance(value, (int, float)):
            return cls(by_record=True, similarity=float(value))
        if isinstance(value, str):
            v = value.strip().lower()
            if v == "record":
                return cls()
            if v in ("similar", "similarity"):
                return cls(by_record=False, similarity=0.95)
            if v == "both":
                return cls(by_record=True, similarity=0.95)
        raise QueryError(f"unknown grouping {value!r}; use record, similar or both")

    def describe(self) -> str:
        parts = []
        if self.by_record:
            parts.append("same record")
        if self.similarity is not None:
            parts.append(f"similarity >= {self.similarity:g}")
        return "grouped by " + " or ".join(parts)


def record_key(metadata: dict) -> str | None:
    """The record identity used by :class:`Grouping` (None when the image has none)."""
    for name in RECORD_FIELDS:
        v = metadata.get(name)
        if v is not None and str(v).strip():
            if name == "catalogNumber":
                inst = metadata.get("institutionCode") or ""
                coll = metadata.get("collectionCode") or ""
                return f"{name}:{inst}:{coll}:{str(v).strip()}"
            return f"{name}:{str(v).strip()}"
    return None


def parse_term(spec: str) -> Term:
    """Parse ``KIND[:WEIGHT]=VALUE`` (the CLI's ``--term``): ``text=Corvus``, ``text:-0.5=juvenile``,
    ``image:2=photo.jpg``, ``id=42``, ``taxon=Corvidae``, ``vector=q.npy`` (a .npy file). Everything
    after the first ``=`` is the value, as it is."""
    m = _TERM.match(spec or "")
    if not m:
        raise QueryError(
            f"cannot read query term {spec!r}: write KIND=VALUE or KIND:WEIGHT=VALUE with KIND one of {', '.join(TERM_KINDS)}"
        )
    kind, weight_text, value = m.group(1).lower(), m.group(2), m.group(3)
    weight = 1.0
    if weight_text:
        try:
            weight = float(weight_text)
        except ValueError:
            raise QueryError(f"the weight in {spec!r} is not a number") from None
    if kind == "image":
        return Term.image(value.strip(), weight)
    if kind == "vector":
        path = value.strip()
        data = read_query_file(path, _MAX_VECTOR_FILE, "vector file")
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise QueryError(f"cannot read the vector file {path}: {exc}") from None
        return Term.vector(arr, weight, label=f"vector {Path(path).name}")
    return Term(kind, value.strip() if kind != "text" else value, weight)


def terms_from_options(
    text: str | None = None,
    *,
    plus: Iterable[str] = (),
    minus: Iterable[str] = (),
    images: Iterable[str] = (),
    minus_images: Iterable[str] = (),
    ids: Iterable[int] = (),
    minus_ids: Iterable[int] = (),
    terms: Iterable[str] = (),
    minus_weight: float = 1.0,
) -> Query:
    """The query the CLI's options describe: the positive terms (weight 1), then the negative ones
    (``-minus_weight``), then the ``--term`` ones, in the order given."""
    out: list[Term] = []
    if text is not None:
        out.append(Term.text(text))
    out += [Term.text(t) for t in plus]
    out += [Term.image(p) for p in images]
    out += [Term.id(i) for i in ids]
    out += [Term.text(t, -minus_weight) for t in minus]
    out += [Term.image(p, -minus_weight) for p in minus_images]
    out += [Term.id(i, -minus_weight) for i in minus_ids]
    out += [parse_term(t) for t in terms]
    return Query(tuple(out))


@dataclass
class EmbeddedTerm:
    """A term after embedding: its unit vector and how it was understood (for the engine)."""

    term: Term
    vector: np.ndarray  # (d,) float32, unit
    description: str
    prompt: str | None = None
    taxon: Any = None
    alternatives: list = field(default_factory=list)
    image_id: int | None = None  # an id term's image (the one that replaced a retired id)
