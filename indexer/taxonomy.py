"""The collection's own taxonomy: resolving a name typed by a user to a taxon in the collection.

Built from the metadata (kingdom ... specificEpithet, scientificName, vernacularName), so a query
like "corvidae", "Corvus corax" or "common raven" is understood only when the collection has such
images, and is expanded to the lineage that BioCLIP was trained on.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from indexer.schema import RANK_COLUMNS, RANKS, quote_ident

__all__ = ["TaxonMatch", "Taxonomy", "normalise_name"]

_WS = re.compile(r"\s+")


def normalise_name(text: str) -> str:
    """Case-, accent-width- and whitespace-insensitive form of a name for matching."""
    text = unicodedata.normalize("NFKC", text).strip().strip(".").casefold()
    return _WS.sub(" ", text)


@dataclass(frozen=True)
class TaxonMatch:
    """A taxon of the collection: its rank, its lineage down to that rank, and an image count."""

    rank: str  # one of RANKS
    lineage: tuple[str | None, ...]  # values for RANK_COLUMNS up to ``rank`` (inclusive), rest None
    count: int
    common_name: str | None = None
    matched: str = ""  # how the query matched: "scientific name", "common name", "genus", ...
    alternatives: tuple[str, ...] = field(default=(), compare=False)

    @property
    def name(self) -> str:
        """The scientific name at this rank ("Corvus corax" for a species)."""
        i = RANKS.index(self.rank)
        if self.rank == "species":
            return f"{self.lineage[5] or ''} {self.lineage[6] or ''}".strip()
        return self.lineage[i] or ""

    @property
    def column(self) -> str:
        return RANK_COLUMNS[RANKS.index(self.rank)]

    def taxon(self):
        """The bioclip ``Taxon`` for this match (for BioCLIP's text forms)."""
        from bioclip.taxa import Taxon

        vals = dict(zip(("kingdom", "phylum", "class_", "order", "family", "genus", "species"), self.lineage))
        return Taxon(**vals, common_name=self.common_name)

    def filter_sql(self) -> tuple[str, list]:
        """SQL condition selecting every image of this taxon (including everything below it)."""
        i = RANKS.index(self.rank)
        conds, params = [], []
        # Match on the rank's own column and, for a species, its genus, so "Corvus corax" does not
        # pick up "Pica corax". Higher ranks are unique enough by name within a collection.
        if self.rank == "species":
            conds.append(f"lower({quote_ident('genus')}) = lower(?)")
            params.append(self.lineage[5])
        conds.append(f"lower({quote_ident(RANK_COLUMNS[i])}) = lower(?)")
        params.append(self.lineage[i])
        return " AND ".join(conds), params

    def describe(self) -> str:
        return f"{self.rank} {self.name}"


class Taxonomy:
    """Name lookup over the distinct lineages of a collection (built once per snapshot)."""

    def __init__(self, rows: list[tuple]):
        # rows: (kingdom, phylum, class, order, family, genus, specificEpithet, scientificName,
        #        vernacularName, count)
        self._names: dict[str, dict[tuple, TaxonMatch]] = {}
        self._taxa: dict[tuple[str, tuple], TaxonMatch] = {}
        agg: dict[tuple[str, tuple], int] = {}
        commons: dict[tuple[str, tuple], set[str]] = {}
        for row in rows:
            lineage = tuple(_clean(v) for v in row[:7])
            sci, vern, count = _clean(row[7]), _clean(row[8]), int(row[9])
            if lineage[5] is None and sci:
                # Only a scientific name: derive genus / epithet from a binomial.
                parts = sci.split()
                if len(parts) >= 2 and parts[0][:1].isupper() and parts[1][:1].islower():
                    lineage = lineage[:5] + (parts[0], parts[1])
                elif len(parts) == 1:
                    lineage = lineage[:5] + (parts[0], None)
            for i, rank in enumerate(RANKS):
                if lineage[i] is None:
                    continue
                if rank == "species" and lineage[5] is None:
                    continue
                key = (rank, lineage[: i + 1])
                agg[key] = agg.get(key, 0) + count
                if rank == "species" and vern:
                    commons.setdefault(key, set()).add(vern)
        for (rank, lin), count in agg.items():
            common = None
            if rank == "species" and len(commons.get((rank, lin), ())) == 1:
                common = next(iter(commons[(rank, lin)]))
            m = TaxonMatch(rank=rank, lineage=lin + (None,) * (7 - len(lin)), count=count, common_name=common)
            self._taxa[(rank, lin)] = m
            self._add(m.name, m, "scientific name")
            if rank == "species":
                for v in commons.get((rank, lin), ()):
                    self._add(v, m, "common name")
        self._sci_full: dict[str, tuple] = {}
        for row in rows:
            sci = _clean(row[7])
            if sci:
                # "Corvus corax Linnaeus, 1758" also finds the species.
                lineage = tuple(_clean(v) for v in row[:7])
                for m in self._lookup_exact(" ".join(sci.split()[:2])):
                    if lineage[5] is None or m.lineage[5] == lineage[5]:
                        self._add(sci, m, "scientific name")

    @classmethod
    def from_connection(cls, con) -> "Taxonomy":
        cols = ", ".join(quote_ident(c) for c in (*RANK_COLUMNS, "scientificName", "vernacularName"))
        rows = con.execute(f"SELECT {cols}, count(*) FROM images GROUP BY ALL").fetchall()
        return cls(rows)

    def _add(self, name: str | None, match: TaxonMatch, how: str) -> None:
        if not name:
            return
        key = normalise_name(name)
        bucket = self._names.setdefault(key, {})
        ident = (match.rank, match.lineage)
        if ident not in bucket:
            bucket[ident] = TaxonMatch(match.rank, match.lineage, match.count, match.common_name, how)

    def _lookup_exact(self, name: str) -> list[TaxonMatch]:
        return list(self._names.get(normalise_name(name), {}).values())

    def resolve(self, name: str) -> list[TaxonMatch]:
        """Every taxon of the collection that ``name`` names, most images first (empty: none)."""
        found = self._lookup_exact(name)
        return sorted(found, key=lambda m: (-m.count, RANKS.index(m.rank)))

    def suggest(self, prefix: str, limit: int = 10) -> list[TaxonMatch]:
        """Taxa whose scientific or common name starts with ``prefix`` (for search-box suggestions)."""
        p = normalise_name(prefix)
        if not p:
            return []
        out: dict[tuple, TaxonMatch] = {}
        for key, bucket in self._names.items():
            if key.startswith(p) or (" " + p) in key:
                for ident, m in bucket.items():
                    out.setdefault(ident, m)
        return sorted(out.values(), key=lambda m: (not m.name.casefold().startswith(p), -m.count, m.name))[:limit]

    def taxa(self, rank: str | None = None) -> list[TaxonMatch]:
        """All taxa (at one rank, if given), most images first."""
        vals = [m for (r, _), m in self._taxa.items() if rank is None or r == rank]
        return sorted(vals, key=lambda m: (-m.count, m.name))

    def __len__(self) -> int:
        return len(self._taxa)


def _clean(v) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None
