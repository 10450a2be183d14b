"""The collection's own taxonomy: resolving a name typed by a user to a taxon in the collection.

Built from the metadata (kingdom ... specificEpithet, scientificName, vernacularName, taxonRank,
infraspecificEpithet, superfamily ... subtribe), so a query like "corvidae", "Corvus corax" or
"common raven" is understood only when the collection has such images, and is expanded to the
lineage that BioCLIP was trained on.

Rules:

- A row's lineage is its seven rank columns (the build fills them from ``scientificName`` and
  ``taxonRank``: see :mod:`indexer.dwc.taxa`); a row with only a ``scientificName`` gets genus and
  epithet from the name ("Corvus corax Linnaeus, 1758" -> Corvus, corax), unless its ``taxonRank``
  says the name is of a higher rank ("Coleoptera", order).
- Ranks beyond the seven are taxa too (:mod:`indexer.search.taxon_match`): a row's
  ``superfamily``, ``subfamily``, ``tribe``, ``subtribe``, and a species with an
  ``infraspecificEpithet`` (a subspecies, variety or form, "Abies alba var. acutifolia", which
  also matches without its rank marker).
- Names match case-, accent-width- and whitespace-insensitively, with a trailing full stop ignored.
  A scientific name with authorship ("Corvus corax Linnaeus, 1758") also finds its species.
- Lineages that differ only in case, or only because one leaves a higher rank out, are one taxon
  (data is messy: "Corvus" filed under "Corvidae" in one row and without a family in another).
- A ``vernacularName`` names the row's own taxon (its lowest filled rank): "common raven" for a
  species, "crows" for a row identified to genus only. The most frequent one is the taxon's
  common name in BioCLIP's text.
- A name that names several taxa (a homonym such as the genus *Morus*, a mulberry and a gannet, or
  a name used at two ranks) resolves to all of them, most images first; the caller says so.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections import Counter

from indexer.dwc.names import INFRASPECIFIC_RANKS, canonical_rank
from indexer.search.taxon_match import (
    SUPRA_RANKS,
    TaxonMatch,
    normalise_name,
    rank_order,
    taxa_filter_sql,
)
from indexer.store.schema import RANK_COLUMNS, RANKS, quote_ident

__all__ = ["TaxonMatch", "Taxonomy", "normalise_name", "looks_like_scientific_name", "taxa_filter_sql", "ROW_COLUMNS"]

#: The columns of a row :class:`Taxonomy` is built from (then its image count); rows of the first
#: nine columns only (and the count) are accepted too.
ROW_COLUMNS = (
    *RANK_COLUMNS,
    "scientificName",
    "vernacularName",
    "taxonRank",
    "infraspecificEpithet",
    *SUPRA_RANKS,
)
_BASE = 9  # kingdom .. specificEpithet, scientificName, vernacularName
# Endings of names above genus (zoological and botanical codes): Corvidae, Rosaceae, Passeriformes ...
_RANK_SUFFIX = re.compile(
    r"(idae|inae|oidea|ini|aceae|oideae|eae|ales|ineae|formes|phyta|phytina|opsida|mycota|mycetes|phyceae)$"
)
_LATIN_WORD = re.compile(r"^[A-Z][a-z]+$")
_EPITHET = re.compile(r"^[a-z][a-z\-]+$")


def looks_like_scientific_name(text: str) -> bool:
    """Whether ``text`` is shaped like a scientific name: a binomial ("Corvus corax", optionally with
    authorship) or one capitalised Latin word with a rank ending ("Corvidae", "Rosales"). Used only
    to word notices ("no taxon named ... in this collection"), never to change a search."""
    words = text.strip().split()
    if len(words) >= 2 and words[0].lower() in RANKS:  # "family Corvidae", "genus Corvus"
        rest = words[1:]
        return (
            len(rest) == 1 and bool(_LATIN_WORD.match(rest[0])) and len(rest[0]) >= 3
        ) or looks_like_scientific_name(" ".join(rest))
    if not words or not _LATIN_WORD.match(words[0]) or len(words[0]) < 3:
        return False
    if len(words) == 1:
        return bool(_RANK_SUFFIX.search(words[0]))
    if len(words) == 3 and all(_EPITHET.match(w) and len(w) >= 3 for w in words[1:]):
        return True  # a trinomial: Salmo trutta fario
    return (
        bool(_EPITHET.match(words[1]))
        and len(words[1]) >= 3
        and (len(words) == 2 or not _EPITHET.match(words[2] or ""))
    )


class Taxonomy:
    """Name lookup over the distinct lineages of a collection (built once per snapshot)."""

    def __init__(self, rows: list[tuple]):
        """``rows``: the :data:`ROW_COLUMNS` of each distinct combination, then its image count (see
        :meth:`from_connection`); rows of the first nine columns and the count are accepted too."""
        counts: dict[tuple, int] = {}
        display: dict[tuple, Counter] = {}
        commons: dict[tuple, Counter] = {}
        sci_names: list[tuple[str, tuple]] = []  # (scientificName, its taxon key)
        extra = _ExtraRanks()
        for row in rows:
            row = tuple(row)
            if len(row) == _BASE + 1:
                row = row[:_BASE] + (None,) * (len(ROW_COLUMNS) - _BASE) + row[_BASE:]
            lineage = tuple(_clean(v) for v in row[:7])
            sci, vern, count = _clean(row[7]), _clean(row[8]), int(row[-1])
            declared = canonical_rank(_clean(row[9]))
            if (
                sci
                and lineage[5] is None
                and (declared is None or declared in ("genus", "species", *INFRASPECIFIC_RANKS))
            ):
                # a name of a higher rank ("Coleoptera", taxonRank order) is not a genus
                lineage = lineage[:5] + _from_scientific(sci)
            elif sci and lineage[6] is None and lineage[5] is not None:
                g, e = _from_scientific(sci)
                if g and e and g.casefold() == lineage[5].casefold():
                    lineage = lineage[:6] + (e,)
            own: tuple | None = None
            for i, rank in enumerate(RANKS):
                if lineage[i] is None or (rank == "species" and lineage[5] is None):
                    continue
                cut = lineage[: i + 1] + (None,) * (6 - i)
                key = (rank, _fold(cut))
                counts[key] = counts.get(key, 0) + count
                display.setdefault(key, Counter())[cut] += count
                own = key
            own = extra.add(row, lineage, declared, count) or own
            if own is not None and vern:
                commons.setdefault(own, Counter())[vern] += count
            if sci and own is not None:
                sci_names.append((sci, own))
        merged = _merge_partial_lineages(counts)
        # taxon key -> TaxonMatch
        self._taxa: dict[tuple, TaxonMatch] = {}
        total: dict[tuple, int] = {}
        vern_total: dict[tuple, Counter] = {}
        shown: dict[tuple, Counter] = {}
        for key, target in merged.items():
            total[target] = total.get(target, 0) + counts[key]
            vern_total.setdefault(target, Counter()).update(commons.get(key, Counter()))
            shown.setdefault(target, Counter()).update(display[key])
        by_name: dict[tuple[str, str], list] = {}
        for key, count in total.items():
            rank = key[0]
            # the spelling most images use, and the most complete lineage among them
            lineage = max(shown[key].items(), key=lambda kv: (sum(v is not None for v in kv[0]), kv[1]))[0]
            best_spelling = shown[key].most_common(1)[0][0]
            i = RANKS.index(rank)
            lineage = tuple(
                best_spelling[j]
                if j <= i
                and best_spelling[j] is not None
                and lineage[j] is not None
                and best_spelling[j].casefold() == lineage[j].casefold()
                else lineage[j]
                for j in range(7)
            )
            m = TaxonMatch(rank=rank, lineage=lineage, count=count, common_name=_most_common(vern_total.get(key)))
            self._taxa[key] = m
            by_name.setdefault((rank, normalise_name(m.name)), []).append(key)
        for key, m in extra.taxa(commons):
            self._taxa[key] = m
            vern_total[key] = commons.get(key, Counter())
            by_name.setdefault((m.rank, normalise_name(m.name)), []).append(key)
        for keys in by_name.values():
            if len(keys) > 1:
                for key in keys:
                    self._taxa[key] = dataclasses.replace(self._taxa[key], homonym=True)
        self._names: dict[str, dict[tuple, str]] = {}
        self._by_initial: dict[str, list[str]] | None = None  # for close_matches, built on first use
        for key, m in self._taxa.items():
            self._add(m.name, key, "scientific name")
            for vern in vern_total.get(key, ()):
                self._add(vern, key, "common name")
        for sci, sci_key in sci_names:
            # "Corvus corax Linnaeus, 1758" finds its species; a name that disagrees with the
            # row's own lineage (messy data) is not trusted
            target = merged.get(sci_key, sci_key)
            if normalise_name(sci).startswith(normalise_name(self._taxa[target].name)):
                self._add(sci, target, "scientific name")

    @classmethod
    def from_connection(cls, con) -> Taxonomy:
        """From a DuckDB connection with an ``images`` relation (one GROUP BY over the names)."""
        present = {r[0] for r in con.execute("DESCRIBE images").fetchall()}
        cols = ", ".join(quote_ident(c) if c in present else f"NULL AS {quote_ident(c)}" for c in ROW_COLUMNS)
        rows = con.execute(f"SELECT {cols}, count(*) FROM images GROUP BY ALL").fetchall()
        return cls(rows)

    def _add(self, name: str | None, key: tuple, how: str) -> None:
        if not name:
            return
        bucket = self._names.setdefault(normalise_name(name), {})
        bucket.setdefault(key, how)

    def _matches(self, norm: str) -> list[TaxonMatch]:
        out = []
        for key, how in self._names.get(norm, {}).items():
            out.append(dataclasses.replace(self._taxa[key], matched=how))
        return out

    def resolve(self, name: str) -> list[TaxonMatch]:
        """Every taxon of the collection that ``name`` names, most images first (empty: none).

        ``name`` is a scientific name at any rank (with or without authorship) or a vernacular
        name, in any case; a leading rank word is allowed ("family Corvidae", "genus Corvus"), and so
        are higher taxa before the name, which choose among homonyms ("Moraceae Morus") and let a
        whole taxonomic string resolve ("Animalia Chordata Aves Passeriformes Corvidae Corvus corax").
        """
        if not isinstance(name, str):
            return []
        norm = normalise_name(name)
        found = self._matches(norm)
        if not found:
            head, _, rest = norm.partition(" ")
            if (head in RANKS or head in _EXTRA_RANK_WORDS) and rest:
                found = [m for m in self._matches(rest) if m.rank == canonical_rank(head)]
        words = norm.split()
        if not found and len(words) > 2 and looks_like_scientific_name(name):
            # "Corvus corax Linnaeus, 1758" when only "Corvus corax" occurs in the data
            found = [m for m in self._matches(" ".join(words[:2])) if m.rank == "species"]
        if not found and len(words) > 1:
            # higher taxa before the name choose among homonyms ("Moraceae Morus") and let a whole
            # taxonomic string through ("Animalia Chordata Aves Passeriformes Corvidae Corvus corax")
            for cut in (2, 1):
                if len(words) <= cut:
                    continue
                parents, tail = words[:-cut], " ".join(words[-cut:])
                found = [m for m in self._matches(tail) if _has_parents(m, parents)]
                if found:
                    break
        return sorted(found, key=lambda m: (-m.count, rank_order(m.rank), _sortable(m.lineage)))

    def suggest(self, prefix: str, limit: int = 10) -> list[TaxonMatch]:
        """Taxa whose scientific or common name starts with ``prefix`` (or has a word that does),
        names that start with it first, then most images (for search-box suggestions)."""
        p = normalise_name(prefix)
        if not p:
            return []
        out: dict[tuple, TaxonMatch] = {}
        for key, bucket in self._names.items():
            if key.startswith(p) or (" " + p) in key:
                for ident in bucket:
                    out.setdefault(ident, self._taxa[ident])
        return sorted(out.values(), key=lambda m: (not m.name.casefold().startswith(p), -m.count, m.name))[:limit]

    def close_matches(self, name: str, limit: int = 3, cutoff: float = 0.8) -> list[TaxonMatch]:
        """Taxa whose names are spelled like ``name`` (typos: "Corvus coraxx"), best first."""
        p = normalise_name(name)
        if not p:
            return []
        # Compare only with names of about the same length that start with the same letter: keeps
        # this fast on collections with hundreds of thousands of names.
        if self._by_initial is None:
            by_initial: dict[str, list[str]] = {}
            for n in self._names:
                by_initial.setdefault(n[:1], []).append(n)
            self._by_initial = by_initial
        slack = max(2, len(p) // 4)
        pool = [n for n in self._by_initial.get(p[:1], ()) if abs(len(n) - len(p)) <= slack]
        out: dict[tuple, TaxonMatch] = {}
        for close in difflib.get_close_matches(p, pool, n=limit, cutoff=cutoff):
            for ident in self._names[close]:
                out.setdefault(ident, self._taxa[ident])
        return list(out.values())[:limit]

    def taxa(self, rank: str | None = None) -> list[TaxonMatch]:
        """All taxa (at one rank, if given), most images first."""
        vals = [m for m in self._taxa.values() if rank is None or m.rank == rank]
        return sorted(vals, key=lambda m: (-m.count, m.name))

    def __len__(self) -> int:
        return len(self._taxa)


def _has_parents(m: TaxonMatch, parents: list[str]) -> bool:
    """Every word of ``parents`` names a rank above ``m`` in its lineage."""
    above = {v.casefold() for v in m.higher()}
    return all(p in above for p in parents)


def _most_common(names: Counter | None) -> str | None:
    """The most frequent name (ties: the first in sort order), or None."""
    if not names:
        return None
    return sorted(names.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


#: Rank words a query may start with besides the seven ("subfamily Felinae", "variety ...").
_EXTRA_RANK_WORDS = {*SUPRA_RANKS, *INFRASPECIFIC_RANKS, "subsp.", "var.", "f."}


class _ExtraRanks:
    """The taxa at ranks beyond the seven: a row's ``superfamily`` ... ``subtribe`` columns, and a
    species with an ``infraspecificEpithet``. Keyed by rank and folded name (a subfamily is known by
    its name within a collection), or by the folded trinomial."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.lineages: dict[tuple, Counter] = {}
        self.names: dict[tuple, Counter] = {}  # the spelling of the own name
        self.ranks: dict[tuple, Counter] = {}  # the declared rank of an infraspecific name

    def add(self, row: tuple, lineage: tuple, declared: str | None, count: int) -> tuple | None:
        """Count ``row``'s extra-rank taxa; the key of the row's own taxon if it is one of them."""
        own: tuple | None = None
        for rank, value in zip(SUPRA_RANKS, row[_BASE + 2 : _BASE + 2 + len(SUPRA_RANKS)]):
            name = _clean(value)
            if name is None:
                continue
            parent = RANKS.index(SUPRA_RANKS[rank])
            self._count((rank, name.casefold()), lineage[: parent + 1] + (None,) * (6 - parent), name, count)
            if declared == rank:
                own = (rank, name.casefold())
        infra = _clean(row[_BASE + 1])
        if infra and lineage[5] and lineage[6]:
            key = ("infra", lineage[5].casefold(), lineage[6].casefold(), infra.casefold())
            self._count(key, lineage, infra, count)
            if declared in INFRASPECIFIC_RANKS:
                self.ranks.setdefault(key, Counter())[declared] += count
            own = key
        return own

    def _count(self, key: tuple, lineage: tuple, name: str, count: int) -> None:
        self.counts[key] += count
        self.lineages.setdefault(key, Counter())[lineage] += count
        self.names.setdefault(key, Counter())[name] += count

    def taxa(self, commons: dict[tuple, Counter]) -> list[tuple[tuple, TaxonMatch]]:
        out = []
        for key, count in self.counts.items():
            lineage = max(self.lineages[key].items(), key=lambda kv: (sum(v is not None for v in kv[0]), kv[1]))[0]
            if key[0] == "infra":
                ranks = self.ranks.get(key)
                rank = ranks.most_common(1)[0][0] if ranks else "subspecies"
            else:
                rank = key[0]
            name = self.names[key].most_common(1)[0][0]
            out.append((key, TaxonMatch(rank, lineage, count, _most_common(commons.get(key)), sub=name)))
        return out


def _clean(v) -> str | None:
    if v is None:
        return None
    s = " ".join(str(v).split())
    return s or None


def _sortable(lineage: tuple) -> tuple:
    return tuple((v is None, v or "") for v in lineage)


def _fold(lineage: tuple) -> tuple:
    return tuple(None if v is None else v.casefold() for v in lineage)


def _from_scientific(sci: str) -> tuple[str | None, str | None]:
    """(genus, epithet) from a scientific name: "Corvus corax Linnaeus, 1758" -> (Corvus, corax);
    a single capitalised word is a genus only when it has no higher-rank ending."""
    parts = sci.split()
    if len(parts) >= 2 and parts[0][:1].isupper() and _EPITHET.match(parts[1]) and parts[1] not in ("sp", "spp"):
        return parts[0], parts[1]
    if len(parts) >= 1 and _LATIN_WORD.match(parts[0]) and not _RANK_SUFFIX.search(parts[0]):
        return parts[0], None
    return None, None


def _merge_partial_lineages(counts: dict[tuple[str, tuple], int]) -> dict[tuple[str, tuple], tuple[str, tuple]]:
    """Map every (rank, folded lineage) to the taxon it belongs to: lineages with the same name at
    the rank whose filled higher ranks agree are one taxon (the one with the most filled ranks,
    then the most images). Homonyms (higher ranks that disagree) stay apart."""
    groups: dict[tuple[str, str | None, str | None], list[tuple[str, tuple]]] = {}
    for key in counts:
        rank, lin = key
        i = RANKS.index(rank)
        groups.setdefault((rank, lin[i], lin[5] if rank == "species" else None), []).append(key)
    out: dict[tuple[str, tuple], tuple[str, tuple]] = {}
    for keys in groups.values():
        if len(keys) == 1:
            out[keys[0]] = keys[0]
            continue
        keys.sort(key=lambda k: (-sum(v is not None for v in k[1]), -counts[k], _sortable(k[1])))
        kept: list[tuple[str, tuple]] = []
        for key in keys:
            target = next((t for t in kept if _compatible(t[1], key[1])), None)
            if target is None:
                kept.append(key)
                target = key
            out[key] = target
    return out


def _compatible(a: tuple, b: tuple) -> bool:
    return all(x is None or y is None or x == y for x, y in zip(a, b))
