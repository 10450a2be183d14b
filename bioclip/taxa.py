"""Taxa and the text BioCLIP was trained on.

A :class:`Taxon` is a (possibly partial) Linnaean lineage, kingdom to species epithet, plus an
optional common name. Names are normalised the way BioCLIP's training data was: kingdom .. genus
capitalised (``Corvidae``), the species epithet lower case (``corax``).

BioCLIP's five text forms (:class:`TextForm`), with the exact strings of BioCLIP's training captions
(``make_txt`` in Imageomics/bioclip ``scripts/evobio10m/make_wds.py``) and evaluation class names
(``src/imageomics/naming_eval.py``)::

    SCIENTIFIC        a photo of Corvus corax.
    COMMON            a photo of common raven.
    TAXONOMIC         a photo of Animalia Chordata Aves Passeriformes Corvidae Corvus corax.
    SCIENTIFIC_COMMON a photo of Corvus corax with common name common raven.
    TAXONOMIC_COMMON  a photo of Animalia Chordata Aves Passeriformes Corvidae Corvus corax with common name common raven.

:func:`taxon_text` gives the part after "a photo of " without the final full stop (the class name
that BioCLIP's zero-shot evaluation and pybioclip fill into OpenAI's 80 templates);
:func:`taxon_prompt` gives the whole caption.

A missing common name never raises. ``SCIENTIFIC_COMMON`` and ``TAXONOMIC_COMMON`` drop the
" with common name ..." clause, as BioCLIP's evaluation code does (``sci_common_name`` /
``taxon_common_name`` in ``naming_eval.py``); ``COMMON`` falls back to the scientific name, as
BioCLIP's training captions did for taxa without a common name (``make_txt``).

This module does not import torch or numpy.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["RANKS", "Taxon", "TextForm", "taxon_text", "taxon_prompt"]

#: The seven Linnaean ranks, highest first. ``species`` holds the specific epithet.
RANKS: tuple[str, ...] = ("kingdom", "phylum", "class", "order", "family", "genus", "species")

# Taxon field for each rank name ("class" is a keyword, so the field is class_).
_FIELD = {rank: ("class_" if rank == "class" else rank) for rank in RANKS}

# Keys accepted by Taxon.from_lineage's mapping form: rank names, field names, Darwin Core terms.
_KEY_TO_RANK: dict[str, str] = {rank: rank for rank in RANKS}
_KEY_TO_RANK.update({"class_": "class", "specificEpithet": "species", "specific_epithet": "species"})
_COMMON_KEYS = ("common_name", "vernacularName", "vernacular_name")

# A word that can be an epithet: lower-case letters, possibly hyphenated (e.g. "novae-angliae").
_EPITHET = re.compile(r"^[a-z\u00e0-\u00ff][a-z\u00e0-\u00ff\-]*$")
_HYBRID_MARKS = ("×", "x")


def _clean(value: Any) -> str | None:
    """None, NaN, and blank strings mean "not given"; everything else is stripped text."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    text = " ".join(str(value).split())
    return text or None


def _rank_index(rank: str) -> int:
    try:
        return RANKS.index(rank)
    except ValueError:
        raise ValueError(f"Unknown rank {rank!r}; ranks are {', '.join(RANKS)}.") from None


@dataclass(frozen=True)
class Taxon:
    """A lineage from kingdom down to (at most) species, and an optional common name.

    Ranks may have gaps (``Taxon(kingdom="Animalia", genus="Corvus")``) but at least one must be
    given, and a species epithet needs its genus. ``species`` is the specific epithet
    (``"corax"``); a binomial given there (``"Corvus corax"``) is split into genus and epithet.
    Values are normalised on construction: blanks become None, kingdom .. genus are capitalised,
    the epithet is lower case. Invalid input raises ValueError.
    """

    kingdom: str | None = None
    phylum: str | None = None
    class_: str | None = None
    order: str | None = None
    family: str | None = None
    genus: str | None = None
    species: str | None = None
    common_name: str | None = None

    def __post_init__(self) -> None:
        values = {f.name: _clean(getattr(self, f.name)) for f in fields(self)}
        for rank in RANKS[:-1]:
            name = values[_FIELD[rank]]
            if name is not None:
                values[_FIELD[rank]] = name[:1].upper() + name[1:].lower()
        species = values["species"]
        if species is not None:
            words = species.split()
            # A binomial in the species slot (common in CSVs): move the genus where it belongs.
            if len(words) > 1:
                genus_word = words[0][:1].upper() + words[0][1:].lower()
                if values["genus"] is None and words[0][:1].isupper():
                    values["genus"] = genus_word
                if genus_word == values["genus"]:
                    words = words[1:]
            values["species"] = " ".join(words).lower()
            if values["genus"] is None:
                raise ValueError(f"A species epithet ({species!r}) needs its genus.")
        if all(values[_FIELD[rank]] is None for rank in RANKS):
            raise ValueError("A Taxon needs at least one rank (kingdom .. species).")
        for name, value in values.items():
            object.__setattr__(self, name, value)

    # ----------------------------------------------------------------- constructors

    @classmethod
    def from_lineage(
        cls,
        lineage: Sequence[Any] | Mapping[str, Any],
        common_name: str | None = None,
        *,
        strict: bool = True,
    ) -> Taxon:
        """Build from a lineage.

        A sequence is read in rank order from kingdom (``["Animalia", "Chordata", "Aves"]``);
        it may be shorter than seven. A mapping may use rank names (``class`` or ``class_``),
        Darwin Core terms (``specificEpithet``, ``vernacularName``) or ``common_name``. With
        ``strict`` (the default) any other key raises ValueError; ``strict=False`` ignores other
        keys, for whole metadata rows. ``common_name`` overrides one found in the mapping.
        """
        values: dict[str, Any] = {}
        common = None
        if isinstance(lineage, Mapping):
            for key, value in lineage.items():
                if key in _KEY_TO_RANK:
                    values[_FIELD[_KEY_TO_RANK[key]]] = value
                elif key in _COMMON_KEYS:
                    common = value
                elif strict:
                    raise ValueError(
                        f"Unknown lineage key {key!r}; use rank names ({', '.join(RANKS)}), "
                        "Darwin Core terms (specificEpithet, vernacularName) or common_name."
                    )
        elif isinstance(lineage, (str, bytes)):
            raise ValueError("from_lineage takes a sequence of rank names or a mapping, not a string.")
        else:
            seq = list(lineage)
            if len(seq) > len(RANKS):
                raise ValueError(f"A lineage has at most {len(RANKS)} ranks, got {len(seq)}: {seq!r}.")
            values = {_FIELD[rank]: value for rank, value in zip(RANKS, seq)}
        if common_name is not None:
            common = common_name
        return cls(**values, common_name=common)

    @classmethod
    def from_name(cls, name: str, rank: str, common_name: str | None = None, **higher_ranks: Any) -> Taxon:
        """A taxon named ``name`` at ``rank``, with optional higher ranks as keywords.

        ``Taxon.from_name("Corvidae", "family", order="Passeriformes")``. At ``species`` the name
        is a binomial (``"Corvus corax"``) or an epithet with ``genus=`` given. Higher-rank
        keywords must be rank names above ``rank`` (``class`` via ``class_=``); anything else is a
        ValueError.
        """
        index = _rank_index(rank)
        values: dict[str, Any] = {}
        for key, value in higher_ranks.items():
            key_rank = _KEY_TO_RANK.get(key)
            if key_rank is None:
                raise ValueError(f"Unknown keyword {key!r}; higher ranks are {', '.join(RANKS[:index])}.")
            if _rank_index(key_rank) >= index:
                raise ValueError(f"{key_rank!r} is not above {rank!r}.")
            values[_FIELD[key_rank]] = value
        cleaned = _clean(name)
        if cleaned is None:
            raise ValueError("from_name needs a non-empty name.")
        name = cleaned
        if rank == "species":
            words = name.split()
            if len(words) > 1:
                values["genus"] = words[0] if values.get("genus") is None else values["genus"]
                given_genus = _clean(values["genus"]) or ""
                if given_genus.lower() != words[0].lower():
                    raise ValueError(f"Species {name!r} does not belong to genus {given_genus!r}.")
                name = " ".join(words[1:])
            elif _clean(values.get("genus")) is None:
                raise ValueError(f"Species epithet {name!r} needs genus=..., or give a binomial.")
        values[_FIELD[rank]] = name
        return cls(**values, common_name=common_name)

    @classmethod
    def from_scientific_name(cls, name: str, rank: str | None = None, common_name: str | None = None) -> Taxon:
        """Parse a scientific name.

        A binomial (``"Corvus corax"``) gives genus + species; authorship, years and
        infraspecific epithets after it are dropped (``"Canis lupus familiaris Linnaeus, 1758"``
        -> Canis lupus), as are ``sp.``/``spp.``. One word is a genus unless ``rank`` says
        otherwise (``from_scientific_name("Corvidae", rank="family")``).
        """
        text = _clean(name)
        if text is None:
            raise ValueError("from_scientific_name needs a non-empty name.")
        words = [w for w in text.split() if w not in _HYBRID_MARKS]
        if not words:
            raise ValueError(f"Cannot parse scientific name {name!r}.")
        head, rest = words[0], words[1:]
        epithet = rest[0] if rest and _EPITHET.match(rest[0]) and rest[0] not in ("sp", "spp") else None
        if rank is None:
            rank = "species" if epithet else "genus"
        _rank_index(rank)
        if rank == "species":
            if epithet is None:
                raise ValueError(f"{name!r} has no species epithet.")
            return cls(genus=head, species=epithet, common_name=common_name)
        if len(words) > 1 and epithet is not None:
            raise ValueError(f"{name!r} looks like a binomial, not a name at rank {rank!r}.")
        return cls(**{_FIELD[rank]: head}, common_name=common_name)

    # ----------------------------------------------------------------- views

    @property
    def rank(self) -> str:
        """The lowest rank that is filled."""
        for rank in reversed(RANKS):
            if getattr(self, _FIELD[rank]) is not None:
                return rank
        raise AssertionError("unreachable: __post_init__ requires one rank")

    def name_at(self, rank: str) -> str | None:
        """The name at ``rank`` or None; at ``species`` this is the binomial (``Corvus corax``)."""
        _rank_index(rank)
        value = getattr(self, _FIELD[rank])
        if rank == "species" and value is not None:
            return f"{self.genus} {value}"
        return value

    @property
    def scientific_name(self) -> str:
        """``Corvus corax`` at species, else the name at the taxon's own rank (``Corvidae``)."""
        return self.name_at(self.rank)  # type: ignore[return-value]

    @property
    def taxonomic_name(self) -> str:
        """The filled ranks joined by spaces, species as its epithet:
        ``Animalia Chordata Aves Passeriformes Corvidae Corvus corax``."""
        return " ".join(v for v in self.lineage() if v is not None)

    def lineage(self) -> tuple[str | None, ...]:
        """The seven rank values in order, None where missing (species as the epithet)."""
        return tuple(getattr(self, _FIELD[rank]) for rank in RANKS)

    def at_rank(self, rank: str) -> Taxon:
        """This lineage cut at ``rank``: ``Corvus corax`` at ``family`` is ...Corvidae.

        The common name is kept only when ``rank`` is the taxon's own rank (a species' common
        name does not name its family). Raises ValueError when ``rank`` is below the taxon's
        rank or the lineage has no name at ``rank``.
        """
        index = _rank_index(rank)
        if index > _rank_index(self.rank):
            raise ValueError(f"{self.scientific_name!r} is at rank {self.rank!r}, above {rank!r}.")
        if getattr(self, _FIELD[rank]) is None:
            raise ValueError(f"{self.taxonomic_name!r} has no {rank} in its lineage.")
        if rank == self.rank:
            return self
        cut = {_FIELD[r]: None for r in RANKS[index + 1 :]}
        return replace(self, **cut, common_name=None)

    def as_dict(self) -> dict[str, str | None]:
        """Rank names (``class``, ``species`` as epithet) and ``common_name`` -> values."""
        d: dict[str, str | None] = {rank: getattr(self, _FIELD[rank]) for rank in RANKS}
        d["common_name"] = self.common_name
        return d

    def __str__(self) -> str:
        return self.scientific_name


class TextForm(str, enum.Enum):
    """BioCLIP's five text forms (see the module docstring for the exact strings)."""

    SCIENTIFIC = "scientific"
    COMMON = "common"
    TAXONOMIC = "taxonomic"
    SCIENTIFIC_COMMON = "scientific_common"
    TAXONOMIC_COMMON = "taxonomic_common"


def taxon_text(taxon: Taxon, form: TextForm | str = TextForm.TAXONOMIC_COMMON) -> str:
    """The name of ``taxon`` in ``form``, without "a photo of" (what templates are filled with).

    ``taxonomic_common``: ``Animalia Chordata Aves Passeriformes Corvidae Corvus corax with common
    name common raven``. Without a common name the ``*_common`` forms drop the clause and
    ``common`` falls back to the scientific name (see the module docstring for the sources).
    """
    if not isinstance(taxon, Taxon):
        raise TypeError(f"taxon_text takes a Taxon, not {type(taxon).__name__}.")
    form = TextForm(form)
    common = taxon.common_name
    if form is TextForm.SCIENTIFIC:
        return taxon.scientific_name
    if form is TextForm.COMMON:
        return common or taxon.scientific_name
    if form is TextForm.TAXONOMIC:
        return taxon.taxonomic_name
    base = taxon.scientific_name if form is TextForm.SCIENTIFIC_COMMON else taxon.taxonomic_name
    return f"{base} with common name {common}" if common else base


def taxon_prompt(taxon: Taxon, form: TextForm | str = TextForm.TAXONOMIC_COMMON) -> str:
    """BioCLIP's caption for ``taxon``: ``a photo of {taxon_text(taxon, form)}.``"""
    return f"a photo of {taxon_text(taxon, form)}."
