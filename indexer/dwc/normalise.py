"""Normalising the Darwin Core values of many rows at once, in DuckDB, originals kept.

:func:`normalise_query` turns a relation of image rows (every metadata column of
:mod:`indexer.store.schema`) into a ``SELECT`` of the same columns with:

- ``basisOfRecord`` as a Darwin Core class name (:mod:`indexer.dwc.basis`);
- ``license`` as an SPDX id (:mod:`indexer.dwc.licenses`);
- ``country`` and ``countryCode`` filled from each other (:mod:`indexer.dwc.countries`);
- ``taxonRank``, ``genus``, ``specificEpithet``, ``infraspecificEpithet`` and the rank columns made
  consistent with ``scientificName`` (:mod:`indexer.dwc.taxa`, names parsed by GBIF's parser);
- ``verbatim``: what the publisher wrote for every column changed or filled (values a source put
  there first, such as a GBIF download's ``verbatim.txt``, win), ``meta_version`` set, and the
  folded twins of :data:`~indexer.store.schema.FOLDED_COLUMNS` computed.

Python sees only the distinct values (a few thousand licences, countries and names, not millions of
rows); each becomes a small lookup table that the query joins. The build runs it over the rows it
scanned; a reader runs it over rows written before it existed (``meta_version`` null), so
collections built earlier search the same way. It is idempotent: normalised rows come out unchanged.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from indexer.dwc.basis import canonical_basis
from indexer.dwc.countries import normalise_pair
from indexer.dwc.fold import FOLDED_COLUMNS, install_fold
from indexer.dwc.licenses import canonical_license
from indexer.dwc.names import canonical_rank, parse_names
from indexer.dwc.taxa import FILL_RANKS, derive_taxon

__all__ = ["Normalised", "normalise_query", "lift_from_extra", "META_VERSION", "LIFTED_COLUMNS"]

#: The version of this normalisation, recorded in each row's ``meta_version``: rows of a lower one
#: (or none) are normalised again when read. Raise it when a change here changes what rows hold.
META_VERSION = 1

log = logging.getLogger(__name__)

_NAME_COLUMNS = ("scientificName", "taxonRank", "genus", "specificEpithet", "infraspecificEpithet")
_NAME_OUT = ("taxonRank", "genus", "specificEpithet", "infraspecificEpithet")
_counter = itertools.count()

#: Columns this version added that earlier ones kept in ``extra`` under the header's spelling.
LIFTED_COLUMNS = ("superfamily", "subfamily", "tribe", "subtribe")


_EXAMPLES = 5


def quote_ident(name: str) -> str:
    """An SQL identifier quoted for DuckDB, as :func:`indexer.store.schema.quote_ident` does (the
    store's schema builds on this package, so this one cannot import it)."""
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Normalised:
    """The normalising ``sql`` (a SELECT), the lookup tables it joins (drop them with
    :meth:`drop` once the query has run) and what it changes (``report``, see :func:`normalise_query`)."""

    sql: str
    tables: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    def drop(self, con: Any) -> None:
        for t in self.tables:
            con.execute(f"DROP TABLE IF EXISTS {t}")


def _top(counter: Counter) -> list[list[Any]]:
    return [[v, n] for v, n in counter.most_common(_EXAMPLES)]


def normalise_query(con: Any, relation: str) -> Normalised:
    """The normalising SELECT over ``relation`` (a table name or a parenthesised query with every
    metadata column), with lookup tables made on ``con`` from its distinct values.

    ``report`` counts rows: ``basisOfRecord`` / ``license`` ``{"changed", "unrecognised",
    "examples"}`` (examples: the most frequent values not recognised, with their rows);
    ``country`` ``{"changed", "filled", "conflicts", "unresolved", "examples"}``; ``names``
    ``{"changed", "genus_filled", "epithet_filled", "rank_filled", "higher_rank_filled",
    "unparsable", "examples"}``.
    """
    install_fold(con)
    n = next(_counter)
    out = Normalised("")
    joins: list[str] = []
    inner: list[str] = []  # new values, as _n_<column>
    replaced: dict[str, str] = {}  # column -> its new value's name in the inner query

    for column, canonical in (("basisOfRecord", canonical_basis), ("license", canonical_license)):
        table = f"_dwc_{column.lower()}_{n}"
        alias = f"m_{column.lower()}"
        _single_map(con, relation, column, canonical, table, out)
        joins.append(f"LEFT JOIN {table} {alias} ON {alias}.raw = r.{quote_ident(column)}")
        inner.append(f"coalesce({alias}.canon, r.{quote_ident(column)}) AS _n_{column}")
        replaced[column] = f"_n_{column}"

    table = f"_dwc_country_{n}"
    _country_map(con, relation, table, out)
    joins.append(
        f'LEFT JOIN {table} mc ON mc.country IS NOT DISTINCT FROM r."country" AND mc.code IS NOT DISTINCT FROM r."countryCode"'
    )
    inner += [
        'CASE WHEN mc.found THEN mc.new_country ELSE r."country" END AS _n_country',
        'CASE WHEN mc.found THEN mc.new_code ELSE r."countryCode" END AS _n_countryCode',
    ]
    replaced.update(country="_n_country", countryCode="_n_countryCode")

    table = f"_dwc_names_{n}"
    _names_map(con, relation, table, out)
    on = " AND ".join(f"mn.{quote_ident(c)} IS NOT DISTINCT FROM r.{quote_ident(c)}" for c in _NAME_COLUMNS)
    joins.append(f"LEFT JOIN {table} mn ON {on}")
    for c in _NAME_OUT:
        inner.append(
            f"CASE WHEN mn.found IS NULL OR NOT mn.{quote_ident('set_' + c)} THEN r.{quote_ident(c)} ELSE mn.{quote_ident('new_' + c)} END AS _n_{c}"
        )
        replaced[c] = f"_n_{c}"
    for c in FILL_RANKS:
        inner.append(f"coalesce(r.{quote_ident(c)}, CASE WHEN mn.fill_rank = '{c}' THEN mn.fill_name END) AS _n_{c}")
        replaced[c] = f"_n_{c}"

    members = ["CASE WHEN verbatim IS NOT NULL AND verbatim <> '{}' THEN substr(verbatim, 2, length(verbatim) - 2) END"]
    for c, new in replaced.items():
        key = quote_ident(c).replace("'", "''")
        members.append(
            f"CASE WHEN {new} IS DISTINCT FROM {quote_ident(c)} "
            f"AND NOT coalesce(json_exists(verbatim, '$.{key}'), false) "
            f"THEN '{key}:' || coalesce(to_json({quote_ident(c)}), 'null') END"
        )
    verbatim = "nullif('{' || concat_ws(',', " + ", ".join(members) + ") || '}', '{}')"
    outer = [f"{new} AS {quote_ident(c)}" for c, new in replaced.items()]
    outer += [f"{verbatim} AS verbatim", f"{META_VERSION} AS meta_version"]
    for c, folded in FOLDED_COLUMNS.items():
        v = replaced.get(c, quote_ident(c))
        outer.append(f"CASE WHEN strlen({v}) > length({v}) THEN bioclip_fold({v}) END AS {quote_ident(folded)}")
    news = ", ".join(replaced.values())
    out.sql = (
        f"SELECT * EXCLUDE ({news}) REPLACE ({', '.join(outer)}) FROM "
        f"(SELECT r.*, {', '.join(inner)} FROM {relation} r {' '.join(joins)})"
    )
    return out


def lift_from_extra(relation: str) -> str:
    """A SELECT of ``relation`` with each of :data:`LIFTED_COLUMNS` that is null taken from
    ``extra`` (its term as key, in lower or capitalised case), where a version before these columns
    existed kept it. The value stays in ``extra`` too: that is what was stored."""
    lifts = []
    for c in LIFTED_COLUMNS:
        keys = [f"json_extract_string(extra, '$.\"{k}\"')" for k in (c, c.capitalize())]
        lifts.append(f"coalesce({quote_ident(c)}, {', '.join(keys)}) AS {quote_ident(c)}")
    return f"SELECT * REPLACE ({', '.join(lifts)}) FROM {relation}"


def _register(con: Any, name: str, table: pa.Table, out: Normalised) -> None:
    con.register("_dwc_rows", table)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM _dwc_rows")
    finally:
        con.unregister("_dwc_rows")
    out.tables.append(name)


def _single_map(
    con: Any, relation: str, column: str, canonical: Callable[[str], str | None], name: str, out: Normalised
) -> None:
    col = quote_ident(column)
    rows = con.execute(f"SELECT {col}, count(*) FROM {relation} WHERE {col} IS NOT NULL GROUP BY 1").fetchall()
    raws, canons = [], []
    changed, unknown = 0, Counter[str]()
    for value, count in rows:
        canon = canonical(value)
        if canon is None:
            unknown[value] += count
        elif canon != value:
            raws.append(value)
            canons.append(canon)
            changed += count
    _register(con, name, pa.table({"raw": pa.array(raws, pa.string()), "canon": pa.array(canons, pa.string())}), out)
    out.report[column] = {"changed": changed, "unrecognised": sum(unknown.values()), "examples": _top(unknown)}


def _country_map(con: Any, relation: str, name: str, out: Normalised) -> None:
    rows = con.execute(
        f'SELECT "country", "countryCode", count(*) FROM {relation} '
        'WHERE "country" IS NOT NULL OR "countryCode" IS NOT NULL GROUP BY ALL'
    ).fetchall()
    cols: dict[str, list] = {"country": [], "code": [], "new_country": [], "new_code": [], "found": []}
    changed = filled = conflicts = 0
    unresolved: Counter = Counter()
    for country, code, count in rows:
        fix = normalise_pair(country, code)
        if fix.status == "unresolved":
            unresolved[country if country is not None else code] += count
        if fix.status == "conflict":
            conflicts += count
        if (fix.country, fix.code) == (country, code):
            continue
        changed += count
        if (country is None and fix.country) or (code is None and fix.code):
            filled += count
        for k, v in zip(cols, (country, code, fix.country, fix.code, True)):
            cols[k].append(v)
    types = [pa.string()] * 4 + [pa.bool_()]
    _register(con, name, pa.table({k: pa.array(v, t) for (k, v), t in zip(cols.items(), types)}), out)
    out.report["country"] = {
        "changed": changed,
        "filled": filled,
        "conflicts": conflicts,
        "unresolved": sum(unresolved.values()),
        "examples": _top(unresolved),
    }


def _complete(row: tuple) -> bool:
    """Whether a (scientificName, taxonRank, genus, specificEpithet, infraspecificEpithet) row is a
    species whose name columns leave nothing for its name to add."""
    _, rank, genus, epithet, _ = row[:5]
    return canonical_rank(rank) == "species" and bool(genus) and bool(epithet) and " " not in epithet.strip()


def _names_map(con: Any, relation: str, name: str, out: Normalised) -> None:
    sel = ", ".join(quote_ident(c) for c in _NAME_COLUMNS)
    empties = ", ".join(f"count(*) FILTER (WHERE {quote_ident(c)} IS NULL)" for c in FILL_RANKS)
    rows = con.execute(
        f"SELECT {sel}, count(*), {empties} FROM {relation} WHERE "
        + " OR ".join(f"{quote_ident(c)} IS NOT NULL" for c in ("scientificName", "taxonRank", "specificEpithet"))
        + " GROUP BY ALL"
    ).fetchall()
    # A species with its genus and a one-word epithet says all a parse could: not parsed (most rows
    # of a GBIF download). Everything else is, once per distinct name.
    parsed = parse_names({(r[0], canonical_rank(r[1])) for r in rows if r[0] is not None and not _complete(r)})
    outs = ("taxonRank", "genus", "specificEpithet", "infraspecificEpithet")
    cols: dict[str, list] = {c: [] for c in _NAME_COLUMNS}
    cols.update({f"new_{c}": [] for c in outs})
    cols.update({f"set_{c}": [] for c in outs})
    cols.update(fill_rank=[], fill_name=[], found=[])
    counts: Counter[str] = Counter()
    unparsable: Counter = Counter()
    for sci, rank, genus, epithet, infra, count, *empty in rows:
        p = parsed.get((sci, canonical_rank(rank))) if sci is not None else None  # None when not parsed
        if p is not None and p.kind == "unparsable":
            unparsable[sci] += count
        fix = derive_taxon(
            scientific_name=sci,
            taxon_rank=rank,
            genus=genus,
            specific_epithet=epithet,
            infraspecific_epithet=infra,
            parsed=p,
        )
        if not fix:
            continue
        fills = empty[FILL_RANKS.index(fix["fill_rank"])] if "fill_rank" in fix else 0
        counts["changed"] += count if len(fix) > 2 or "fill_rank" not in fix else fills
        for key, what in (
            ("genus", "genus_filled"),
            ("specificEpithet", "epithet_filled"),
            ("taxonRank", "rank_filled"),
        ):
            if key in fix:
                counts[what] += count
        counts["higher_rank_filled"] += fills
        for c, v in zip(_NAME_COLUMNS, (sci, rank, genus, epithet, infra)):
            cols[c].append(v)
        for c in outs:
            cols[f"new_{c}"].append(fix.get(c))
            cols[f"set_{c}"].append(c in fix)
        cols["fill_rank"].append(fix.get("fill_rank"))
        cols["fill_name"].append(fix.get("fill_name"))
        cols["found"].append(True)
    arrays = {
        k: pa.array(v, pa.bool_() if k.startswith("set_") or k == "found" else pa.string()) for k, v in cols.items()
    }
    _register(con, name, pa.table(arrays), out)
    out.report["names"] = {
        "changed": counts["changed"],
        "genus_filled": counts["genus_filled"],
        "epithet_filled": counts["epithet_filled"],
        "rank_filled": counts["rank_filled"],
        "higher_rank_filled": counts["higher_rank_filled"],
        "unparsable": sum(unparsable.values()),
        "examples": _top(unparsable),
    }
