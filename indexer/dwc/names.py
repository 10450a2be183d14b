"""Scientific names and ranks: ``taxonRank`` in one vocabulary, names parsed by GBIF's parser.

:func:`canonical_rank` maps the spellings of ``taxonRank`` (``SPECIES``, ``Species``, ``sp.``,
``subsp.``, ``var.``, ``f.``, GBIF's ``INFRASPECIFIC_NAME``) to lower-case rank names
(``species``, ``subspecies``, ``variety``, ``form``, ``infraspecificname``); ``unranked`` and
unknown words are None.

:func:`parse_names` parses names with ``gbif-name-parser`` (GBIF's name parser, Apache-2.0, a
native extension with no network use), giving each name's genus, epithets, rank and canonical
form without authorship. Three kinds of result are kept apart (:class:`ParsedName` ``kind``):

- ``scientific``: a parsed name (``Corvus corax Linnaeus, 1758``; ``Abies alba var. acutifolia``;
  the uninomial ``Coleoptera``, whose rank only the record's ``taxonRank`` can tell);
- ``informal``: a name that is not fully determined: ``Bombus sp.``, ``Galium spec.``,
  ``Carabus cf. auratus`` (its genus is trusted, its epithet is not);
- ``unparsable``: not a name (``Incertae sedis``, a virus, a hybrid formula, a placeholder).

The package installs the import name ``nameparser``, which an unrelated and popular PyPI package
(``nameparser``, for people's names) also uses: whichever is installed last owns the folder.
:func:`parser` imports the native module ``nameparser.nameparser`` and checks it has ``parse_all``,
so the wrong package is a clear :class:`~indexer.errors.NameParserError`, never a wrong parse.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from indexer.errors import NameParserError

__all__ = ["ParsedName", "parse_names", "canonical_rank", "parser", "INFRASPECIFIC_RANKS", "RANK_MARKERS"]

#: Ranks below species, as :func:`canonical_rank` names them.
INFRASPECIFIC_RANKS = ("subspecies", "variety", "subvariety", "form", "subform", "infraspecificname")

#: The marker each infraspecific rank is written with in a botanical name.
RANK_MARKERS = {"subspecies": "subsp.", "variety": "var.", "subvariety": "subvar.", "form": "f.", "subform": "subf."}

_RANK_WORDS = {
    "sp": "species",
    "spp": "species",
    "spec": "species",
    "subsp": "subspecies",
    "ssp": "subspecies",
    "var": "variety",
    "v": "variety",
    "subvar": "subvariety",
    "f": "form",
    "fo": "form",
    "forma": "form",
    "subf": "subform",
    "gen": "genus",
    "fam": "family",
    "subfam": "subfamily",
    "ord": "order",
    "cl": "class",
    "ph": "phylum",
    "div": "phylum",
    "division": "phylum",
    "regnum": "kingdom",
    "infraspecific": "infraspecificname",
    "infraspecies": "infraspecificname",
    "trinomial": "infraspecificname",
}
_KNOWN_RANKS = {
    "domain",
    "kingdom",
    "subkingdom",
    "phylum",
    "subphylum",
    "superclass",
    "class",
    "subclass",
    "infraclass",
    "superorder",
    "order",
    "suborder",
    "infraorder",
    "superfamily",
    "family",
    "subfamily",
    "tribe",
    "subtribe",
    "genus",
    "subgenus",
    "section",
    "series",
    "speciesaggregate",
    "species",
    *INFRASPECIFIC_RANKS,
    "cultivar",
}
_NOT_WORD = re.compile(r"[\s._-]+")
_JUNK = re.compile(r"[!?]")

_lock = threading.Lock()
_module: Any = None


@lru_cache(maxsize=256)
def canonical_rank(value: str | None) -> str | None:
    """``SPECIES`` / ``Species`` / ``sp.`` -> ``species`` (see the module docstring); None when unknown."""
    if value is None:
        return None
    key = _NOT_WORD.sub("", value.strip().lower())
    key = _RANK_WORDS.get(key, key)
    return key if key in _KNOWN_RANKS else None


def parser() -> Any:
    """The native ``gbif-name-parser`` module (raises NameParserError naming the fix)."""
    global _module
    with _lock:
        if _module is None:
            try:
                # the extension module inside the package (the foreign 'nameparser' has none)
                native = importlib.import_module("nameparser.nameparser")
            except ImportError as exc:
                found = _foreign_nameparser()
                raise NameParserError(_message(found)) from exc
            if not hasattr(native, "parse_all") or not hasattr(native, "UnparsableNameError"):
                raise NameParserError(_message(getattr(native, "__file__", "?")))
            _module = native
        return _module


def _foreign_nameparser() -> str | None:
    try:
        import nameparser as other
    except ImportError:
        return None
    return getattr(other, "__file__", None) or "?"


def _message(found: str | None) -> str:
    fix = "pip install --force-reinstall gbif-name-parser"
    if found:
        return (
            f"scientific names are parsed with gbif-name-parser, but the 'nameparser' Python finds ({found}) "
            "is another package of the same import name (PyPI 'nameparser', for people's names); "
            f"pip uninstall nameparser, then {fix}"
        )
    return f"scientific names are parsed with gbif-name-parser, which is not installed: {fix}"


@dataclass(frozen=True)
class ParsedName:
    """What a scientific name says: ``kind`` (``scientific``, ``informal`` or ``unparsable``), its
    ``rank`` (:func:`canonical_rank` form, None when the name alone cannot tell), ``genus``,
    ``specific_epithet``, ``infraspecific_epithet``, ``uninomial`` (a name of one word above
    species), ``canonical`` (without authorship) and ``authorship``."""

    kind: str
    rank: str | None = None
    genus: str | None = None
    specific_epithet: str | None = None
    infraspecific_epithet: str | None = None
    uninomial: str | None = None
    canonical: str | None = None
    authorship: str | None = None


_UNPARSABLE = ParsedName("unparsable")


def parse_names(names: Iterable[tuple[str, str | None]]) -> dict[tuple[str, str | None], ParsedName]:
    """Parse ``(name, rank)`` pairs (``rank`` in :func:`canonical_rank` form, the record's own, or
    None); returns each pair's :class:`ParsedName`. Names are parsed in one batch per rank."""
    native = parser()
    by_rank: dict[str | None, list[str]] = {}
    for name, rank in dict.fromkeys(names):
        by_rank.setdefault(rank, []).append(name)
    out: dict[tuple[str, str | None], ParsedName] = {}
    for rank, group in by_rank.items():
        hint = rank.upper() if rank else None
        clean = [" ".join(n.split()) for n in group]
        results = native.parse_all(clean, rank=hint) if hint else native.parse_all(clean)
        for name, text, result in zip(group, clean, results):
            out[(name, rank)] = _UNPARSABLE if result is None or _JUNK.search(text) else _convert(native, result)
    return out


def _convert(native: Any, r: Any) -> ParsedName:
    if isinstance(r, native.Informal):
        # "Bombus sp.": only the taxon it hangs off is known
        rank = canonical_rank(r.taxon_rank)
        return ParsedName(
            "informal",
            rank=rank,
            genus=r.taxon if rank == "genus" else None,
            uninomial=r.taxon if rank != "genus" else None,
            canonical=r.taxon,
        )
    rank = canonical_rank(r.rank)
    kind = "informal" if r.type == "INFORMAL" else "scientific"
    if r.type not in ("SCIENTIFIC", "INFORMAL"):
        return _UNPARSABLE
    epithet = r.specific_epithet
    if kind == "informal" and r.epithet_qualifier:
        epithet = None  # "Carabus cf. auratus": the genus is known, the species is not
    return ParsedName(
        kind,
        rank="species" if rank == "speciesaggregate" else rank,
        genus=r.genus,
        specific_epithet=epithet,
        infraspecific_epithet=r.infraspecific_epithet if kind == "scientific" else None,
        uninomial=r.uninomial,
        canonical=r.canonical_name_without_authorship(),
        authorship=r.authorship_complete(),
    )
