"""Filters over normalised rows: either spelling of a value finds both, countries by name or code,
text blind to case and accents, and what the publisher wrote by ``verbatim.FIELD``."""

from __future__ import annotations

import duckdb
import pytest

from indexer.dwc import normalise_query
from indexer.search.filters import available_fields, parse_where
from indexer.store.schema import METADATA_COLUMNS, quote_ident

ROWS = [
    dict(id=0, basisOfRecord="PRESERVED_SPECIMEN", license="CC_BY_4_0", countryCode="US", recordedBy="Tomás Gómez"),
    dict(id=1, basisOfRecord="HumanObservation", license="http://creativecommons.org/licenses/by/4.0/", country="USA"),
    dict(id=2, basisOfRecord="S", license="CC BY-NC 4.0", country="Deutschland", recordedBy="Jürgen Ølsen"),
    dict(id=3, basisOfRecord="HUMAN_OBSERVATION", country="golfe du bengale", recordedBy="TOMAS GOMEZ"),
    dict(id=4, scientificName="Felis catus Linnaeus, 1758", taxonRank="SPECIES", locality="Río Grande"),
]


@pytest.fixture(scope="module")
def con():
    c = duckdb.connect()
    cols = ", ".join(f"{quote_ident(col)} VARCHAR" for col in METADATA_COLUMNS)
    c.execute(f"CREATE TABLE raw (id INTEGER, {cols})")
    for r in ROWS:
        keys = list(r)
        c.execute(
            f"INSERT INTO raw ({', '.join(quote_ident(k) for k in keys)}) VALUES ({', '.join('?' for _ in keys)})",
            list(r.values()),
        )
    n = normalise_query(c, "raw")
    c.execute(f"CREATE TABLE images AS {n.sql}")
    return c


def ids(con, *where):
    sql, params, _ = parse_where(list(where)).to_sql()
    return sorted(r[0] for r in con.execute(f"SELECT id FROM images WHERE {sql}", params).fetchall())


@pytest.mark.parametrize(
    "where, expected",
    [
        (["basisOfRecord=HumanObservation"], [1, 3]),
        (["basisOfRecord=HUMAN_OBSERVATION"], [1, 3]),
        (["basisOfRecord=PreservedSpecimen"], [0, 2]),
        (["basisOfRecord=Specimen"], [0, 2]),  # a publisher's spelling finds the canonical value
        (["basisOfRecord!=HUMAN_OBSERVATION"], [0, 2, 4]),
        (["license=CC-BY-4.0"], [0, 1]),
        (["license=CC_BY_4_0"], [0, 1]),
        (["license=https://creativecommons.org/licenses/by/4.0/legalcode"], [0, 1]),
        (["license~by-nc"], [2]),
        (["country=USA"], [0, 1]),
        (["country=US"], [0, 1]),
        (["country=united states"], [0, 1]),
        (["country=DE"], [2]),
        (["countryCode=Germany"], [2]),
        (["country=golfe du bengale"], [3]),  # a value that resolves to no country is matched as written
        (["country=US", "country=Germany"], [0, 1, 2]),
        (["country!=US"], [2, 3, 4]),
        (["recordedBy~tomas"], [0, 3]),
        (["recordedBy=tomás gómez"], [0, 3]),
        (["recordedBy~OLSEN"], [2]),
        (["locality~rio"], [4]),
        (["taxonRank=species"], [4]),
        (["taxonRank=SPECIES"], [4]),
        (["genus=Felis"], [4]),  # derived from the binomial
        (["verbatim.basisOfRecord=S"], [2]),  # what the publisher wrote
        (["verbatim.country~deutsch"], [2]),
    ],
)
def test_filters_on_normalised_values(con, where, expected):
    assert ids(con, *where) == expected


def test_hidden_columns_are_no_fields():
    names = [n for n, _ in available_fields()]
    assert "meta_version" not in names and not any(n.startswith("_fold_") for n in names)
    assert "verbatim.FIELD" in names and "verbatim" not in names
    assert {"subfamily", "tribe", "superfamily", "subtribe"} <= set(names)
