"""A record's taxonomic columns made consistent with its ``scientificName`` and ``taxonRank``.

:func:`derive_taxon` takes a record's name columns and the parse of its scientific name
(:mod:`indexer.dwc.names`) and returns the columns to change:

- ``taxonRank`` in one vocabulary (``SPECIES`` -> ``species``); filled from the name when missing
  (``Abies alba var. acutifolia`` is a variety);
- ``genus``, ``specificEpithet``, ``infraspecificEpithet`` filled from a binomial or trinomial when
  missing, or when the column holds more than an epithet: the binomial that GBIF's 2013 downloads
  wrote in ``specificEpithet`` (``Tetraodon fluviatilis``), ``bulbosa agg.``; placeholders (``sp.``,
  ``spec.``, ``indet.``) mean "not identified to species": the epithet is emptied. A name whose
  genus disagrees with the record's own ``genus`` is not trusted for anything;
- a name of one word (``Coleoptera``) fills the column of the record's ``taxonRank`` (``order``)
  when that column is empty, and is a genus only when the rank says genus, or when no rank is
  given and the word has no ending of a higher rank (``-idae``, ``-aceae``, ``-ptera``, ...).
"""

from __future__ import annotations

import re

from indexer.dwc.names import INFRASPECIFIC_RANKS, ParsedName, canonical_rank

__all__ = ["derive_taxon", "FILL_RANKS", "EPITHET_PLACEHOLDERS"]

#: Ranks above genus whose column a uninomial of that rank fills (schema columns).
FILL_RANKS = ("kingdom", "phylum", "class", "order", "superfamily", "family", "subfamily", "tribe", "subtribe")

#: ``specificEpithet`` values that say the record is not identified to species.
EPITHET_PLACEHOLDERS = frozenset(
    {"sp", "sp.", "spp", "spp.", "spec", "spec.", "indet", "indet.", "?", "cf", "cf.", "aff", "aff."}
)

_EPITHET = re.compile(r"^[a-z\u00e0-\u00ff\u00d7][a-z\u00e0-\u00ff\-]*$")
# Endings of names above genus (zoological and botanical codes, and the insect orders).
_HIGHER_SUFFIX = re.compile(
    r"(idae|inae|oidea|ini|ina|aceae|oideae|eae|ales|ineae|formes|phyta|phytina|opsida|mycota|mycetes|phyceae|ptera)$"
)


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.casefold() == b.casefold()


def _epithet_of(value: str | None, genus: str | None) -> tuple[str | None, bool]:
    """(the epithet a ``specificEpithet`` value holds, whether the value is usable as it is)."""
    if value is None:
        return None, False
    v = " ".join(value.split())
    if v.lower() in EPITHET_PLACEHOLDERS:
        return None, False
    words = v.split(" ")
    if len(words) == 1:
        return v, True  # one word: the publisher's, even when it is odd (digits, capitals)
    # "Tetraodon fluviatilis" (a binomial), "bulbosa agg.", "alba L."
    if words[0][:1].isupper() and (genus is None or _same(words[0], genus)):
        words = words[1:]
    first = words[0] if words else ""
    return (
        (first, False) if _EPITHET.match(first.lower()) and first.lower() not in EPITHET_PLACEHOLDERS else (None, False)
    )


def derive_taxon(
    *,
    scientific_name: str | None,
    taxon_rank: str | None,
    genus: str | None,
    specific_epithet: str | None,
    infraspecific_epithet: str | None,
    parsed: ParsedName | None,
) -> dict[str, str | None]:
    """The columns to change (see the module docstring): keys among ``taxonRank``, ``genus``,
    ``specificEpithet``, ``infraspecificEpithet``, and ``fill_rank`` / ``fill_name`` (a rank column
    above genus to fill when empty)."""
    out: dict[str, str | None] = {}
    rank = canonical_rank(taxon_rank)
    if taxon_rank is not None and rank is not None and rank != taxon_rank:
        out["taxonRank"] = rank
    p = parsed if parsed is not None and parsed.kind != "unparsable" else None
    if p is not None and genus is not None and p.genus is not None and not _same(p.genus, genus):
        p = None  # the name and the record's genus disagree: trust neither more than the column
    if p is not None and p.genus is None and p.uninomial is not None:
        word = p.uninomial
        word_rank = rank or p.rank
        if word_rank in FILL_RANKS:
            out["fill_rank"], out["fill_name"] = word_rank, word
        elif genus is None and (
            word_rank == "genus" or (word_rank is None and not _HIGHER_SUFFIX.search(word.lower()))
        ):
            out["genus"] = word
        p = None
    new_genus = genus if genus is not None else (p.genus if p is not None else None)
    if genus is None and new_genus is not None:
        out["genus"] = new_genus
    epithet, usable = _epithet_of(specific_epithet, new_genus)
    if not usable:
        from_name = p.specific_epithet if p is not None else None
        best = from_name or epithet
        if best != specific_epithet:
            out["specificEpithet"] = best
        epithet = best
    if (
        infraspecific_epithet is None
        and p is not None
        and p.infraspecific_epithet
        and epithet is not None
        and (p.specific_epithet is None or _same(p.specific_epithet, epithet))
    ):
        out["infraspecificEpithet"] = p.infraspecific_epithet
    if (
        taxon_rank is None
        and p is not None
        and p.kind == "scientific"
        and p.rank in ("genus", "species", *INFRASPECIFIC_RANKS)
    ):
        out["taxonRank"] = p.rank
    return out
