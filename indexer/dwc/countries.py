"""Countries: a name or an ISO 3166 code, in any of the spellings publishers use, resolved to one
ISO 3166-1 alpha-2 code and one name.

Resolution (:func:`resolve_country`), never fuzzy:

1. The value is cleaned: white space collapsed, a trailing ``*``, ``?`` or ``.`` and a leading
   "The " dropped, ``&`` read as "and", ``St.`` as "Saint". Placeholders (``N/A``, ``Unknown``,
   ``inconnu``, ``Not specified``, ``ZZ``, ...) mean "not given": :data:`PLACEHOLDER`.
2. :data:`ALIASES`, a small table of common names that ISO 3166 does not list: ``UK``, ``Great
   Britain``, ``England`` (GB), ``U.S.A.`` (US), ``Russia``, ``Ivory Coast``, ``Deutschland``,
   ``Holland``, ``Burma``, ``Zaire``, ``Turkey``, ``Swaziland``, ``Macedonia``, ``Kosovo`` (``XK``, the
   code GBIF uses) ...
3. ``pycountry`` (the ISO 3166 database): alpha-2, alpha-3 and numeric codes, the short name, the
   official name and the common name, case-insensitively (``USA``, ``United States of America``,
   ``Viet Nam``, ``Vietnam``, ``Czech Republic``, ``DEU``, ``276``), and the same names without
   accents (``Cote d'Ivoire``, ``Reunion``).

The name a country gets is ISO's common name where it has one, else its short name ("United
States", "Bolivia", "Taiwan", "Czechia", "Türkiye"). A value that resolves to nothing (a sea, a
region, a typo, "Korea" without North or South) stays as the publisher wrote it; the build counts
such values. ``pycountry.countries.search_fuzzy`` is never used: it ranks loose matches
("Malay" -> Malaysia, "UK" -> Uganda, Ukraine ...), and a wrong country is worse than none.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache

from indexer.dwc.fold import fold

__all__ = ["Country", "resolve_country", "country_name", "ALIASES", "PLACEHOLDER", "PLACEHOLDERS"]


@dataclass(frozen=True)
class Country:
    """A resolved country: ISO 3166-1 alpha-2 ``code`` and its ``name``."""

    code: str
    name: str


#: What :func:`resolve_country` returns for a value that means "not given".
PLACEHOLDER = Country("", "")

#: Folded values that mean "no country given".
PLACEHOLDERS = frozenset(
    {
        "",
        "n/a",
        "n.a",
        "none",
        "null",
        "nil",
        "-",
        "--",
        "?",
        "??",
        "unknown",
        "unk",
        "not known",
        "not specified",
        "unspecified",
        "not given",
        "not recorded",
        "no data",
        "inconnu",
        "desconocido",
        "unbekannt",
        "sconosciuto",
        "zz",
        "xx",
        "xz",
    }
)

#: Names ISO 3166 does not list, folded (see :func:`indexer.dwc.fold.fold`), and their codes.
ALIASES: dict[str, str] = {
    "uk": "GB",
    "u.k": "GB",
    "great britain": "GB",
    "britain": "GB",
    "england": "GB",
    "scotland": "GB",
    "wales": "GB",
    "northern ireland": "GB",
    "u.s.a": "US",
    "u.s": "US",
    "us of america": "US",
    "united states of america (usa)": "US",
    "america": "US",
    "russia": "RU",
    "ivory coast": "CI",
    "deutschland": "DE",
    "west germany": "DE",
    "holland": "NL",
    "burma": "MM",
    "zaire": "CD",
    "dr congo": "CD",
    "drc": "CD",
    "democratic republic of the congo": "CD",
    "congo-kinshasa": "CD",
    "republic of the congo": "CG",
    "congo-brazzaville": "CG",
    "turkey": "TR",
    "turkiye": "TR",
    "macedonia": "MK",
    "swaziland": "SZ",
    "cape verde": "CV",
    "east timor": "TL",
    "brunei": "BN",
    "palestine": "PS",
    "vatican": "VA",
    "vatican city": "VA",
    "micronesia": "FM",
    "falkland islands": "FK",
    "brasil": "BR",
    "espana": "ES",
    "bosnia": "BA",
    "macau": "MO",
    "south korea": "KR",
    "republic of korea": "KR",
    "north korea": "KP",
    "persia": "IR",
    "ceylon": "LK",
    "siam": "TH",
    "kosovo": "XK",
    "xk": "XK",
}

#: Codes outside ISO 3166 that GBIF uses, and their names.
_EXTRA_CODES = {"XK": "Kosovo"}

_TRAILING = re.compile(r"[\s*?.!]+$")
_LEADING_THE = re.compile(r"^the\s+")
_SAINT = re.compile(r"\bst\.?\s+")

_lock = threading.Lock()
_folded_names: dict[str, str] | None = None


def _names() -> dict[str, str]:
    """Folded ISO names (short, official, common) and alpha-3 codes -> alpha-2, built once."""
    global _folded_names
    with _lock:
        if _folded_names is None:
            import pycountry

            table: dict[str, str] = {}
            for c in pycountry.countries:
                for attr in ("name", "official_name", "common_name"):
                    v = getattr(c, attr, None)
                    if v:
                        table.setdefault(fold(v), c.alpha_2)
                table[c.alpha_2.lower()] = c.alpha_2
                table[c.alpha_3.lower()] = c.alpha_2
                table[c.numeric] = c.alpha_2
            _folded_names = table
        return _folded_names


@lru_cache(maxsize=1024)
def country_name(code: str) -> str | None:
    """ISO's common name (else its short name) of an alpha-2 code, or None for an unknown code."""
    code = code.strip().upper()
    if code in _EXTRA_CODES:
        return _EXTRA_CODES[code]
    import pycountry

    c = pycountry.countries.get(alpha_2=code) if len(code) == 2 else None
    if c is None:
        return None
    return getattr(c, "common_name", None) or c.name


@lru_cache(maxsize=8192)
def resolve_country(value: str | None) -> Country | None:
    """The country ``value`` names (a name or a code), :data:`PLACEHOLDER` for a value that means
    "not given", or None when it resolves to no country (see the module docstring)."""
    if value is None:
        return PLACEHOLDER
    key = fold(" ".join(value.split()))
    key = _TRAILING.sub("", key).strip()
    if key in PLACEHOLDERS or not any(ch.isalnum() for ch in key):
        return PLACEHOLDER
    key = _LEADING_THE.sub("", key).replace(" & ", " and ")
    key = _SAINT.sub("saint ", key)
    code = ALIASES.get(key) or ALIASES.get(key.rstrip(".")) or _names().get(key)
    if code is None:
        return None
    name = country_name(code)
    return Country(code, name) if name else None


@dataclass(frozen=True)
class CountryFix:
    """What a record's ``country`` / ``countryCode`` pair becomes: the two values and ``status``:
    ``ok`` (both agree, or one filled from the other), ``conflict`` (both resolve, to different
    countries: the code wins), ``unresolved`` (a value given that names no country: kept as written),
    or ``empty`` (nothing given, or only placeholders)."""

    country: str | None
    code: str | None
    status: str


def normalise_pair(country: str | None, code: str | None) -> CountryFix:
    """A record's ``country`` and ``countryCode``, both filled from whichever resolves. The code is
    the more reliable of the two (an interpreted value in GBIF downloads): when both resolve to
    different countries, the code's country wins (the build counts these)."""
    by_code = resolve_country(code)
    by_name = resolve_country(country)
    chosen = next((c for c in (by_code, by_name) if c is not None and c is not PLACEHOLDER), None)
    if chosen is not None:
        conflict = (
            by_code not in (None, PLACEHOLDER) and by_name not in (None, PLACEHOLDER) and by_code.code != by_name.code
        )
        return CountryFix(chosen.name, chosen.code, "conflict" if conflict else "ok")
    # Nothing resolves: what was given stays as written (placeholders go).
    kept_country = None if by_name is PLACEHOLDER else country
    kept_code = None if by_code is PLACEHOLDER else code
    status = "unresolved" if kept_country is not None or kept_code is not None else "empty"
    return CountryFix(kept_country, kept_code, status)
