"""Case- and accent-blind text: one fold, the same in Python and in DuckDB SQL.

``fold("Tomás Gómez")`` is ``"tomas gomez"``; ``Ærø``, ``Łódź``, ``Straße`` and ``Øre`` fold to
``aero``, ``lodz``, ``strasse`` and ``ore`` (letters that are not a base letter plus a combining mark
are mapped by a small table, since neither Unicode decomposition nor DuckDB's ``strip_accents``
folds them). Stored values and search terms go through the same fold, so a filter finds "Tomás"
whether the user types ``tomas``, ``TOMÁS`` or ``Tomás``.

:data:`FOLD_MACRO` is the SQL form, a DuckDB macro ``bioclip_fold(text)``; :func:`install_fold`
defines it on a connection. For ASCII text the fold is exactly ``lower()``, which is why a stored
folded column is only filled where the value has other characters (:data:`FOLDED_COLUMNS`).
"""

from __future__ import annotations

import unicodedata
from typing import Any

__all__ = ["fold", "FOLD_MACRO", "install_fold", "fold_sql", "SPECIAL_LETTERS", "FOLDED_COLUMNS"]

#: Text columns filtered case- and accent-blind, and the hidden twins holding their folded text
#: (null where the fold is just ``lower()``, i.e. for ASCII text).
FOLDED_COLUMNS: dict[str, str] = {
    c: f"_fold_{c}"
    for c in (
        "scientificName",
        "vernacularName",
        "recordedBy",
        "identifiedBy",
        "locality",
        "stateProvince",
        "country",
        "institutionCode",
        "collectionCode",
        "typeStatus",
        "rightsHolder",
    )
}

#: Letters that do not decompose into a base letter and a combining mark, and their folds.
SPECIAL_LETTERS: dict[str, str] = {
    "ø": "o",
    "ł": "l",
    "æ": "ae",
    "œ": "oe",
    "đ": "d",
    "ð": "d",
    "þ": "th",
    "ß": "ss",
    "ı": "i",
    "ħ": "h",
}

_TABLE = str.maketrans(SPECIAL_LETTERS)


def fold(text: str) -> str:
    """Lower-case ``text`` and drop its accents (see the module docstring)."""
    low = text.lower().translate(_TABLE)
    if low.isascii():
        return low
    decomposed = unicodedata.normalize("NFD", low)
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c)))


def _macro() -> str:
    expr = "lower(s)"
    for letter, base in SPECIAL_LETTERS.items():
        expr = f"replace({expr}, '{letter}', '{base}')"
    # strip_accents drops combining marks; lower() first, so capitals with accents fold too.
    return f"CREATE MACRO IF NOT EXISTS bioclip_fold(s) AS CASE WHEN s IS NULL THEN NULL ELSE strip_accents({expr}) END"


#: The fold as a DuckDB macro, ``bioclip_fold(text)``.
FOLD_MACRO = _macro()


def install_fold(con: Any) -> None:
    """Define ``bioclip_fold`` on a DuckDB connection (and the cursors made from it)."""
    con.execute(FOLD_MACRO)


def fold_sql(expr: str) -> str:
    """SQL folding ``expr`` (needs :func:`install_fold` on the connection)."""
    return f"bioclip_fold({expr})"
