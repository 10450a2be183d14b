"""Metadata filters: every operator and field kind run against a real DuckDB ``images`` table."""

from __future__ import annotations

import datetime as dt
import json
import random

import duckdb
import pyarrow as pa
import pytest

from indexer.dwc import fold, install_fold
from indexer.errors import FilterError
from indexer.search.filters import Condition, Filter, available_fields, parse_where
from indexer.search.taxonomy import Taxonomy
from indexer.search.values import ColumnValues
from indexer.store.schema import arrow_schema

ROWS = [
    # id, scientificName, genus, epithet, family, country, year, lat, lon, institution, extra
    dict(
        id=0,
        scientificName="Corvus corax",
        genus="Corvus",
        specificEpithet="corax",
        family="Corvidae",
        vernacularName="common raven",
        country="Kenya",
        year=1900,
        eventDate="1900-05-01",
        decimalLatitude=-1.0,
        decimalLongitude=36.0,
        institutionCode="NHM",
        basisOfRecord="PreservedSpecimen",
        typeStatus="holotype",
        license="CC-BY-4.0",
        extra={"elevation": "1200", "preparations": "skin"},
    ),
    dict(
        id=1,
        scientificName="Corvus corone",
        genus="Corvus",
        specificEpithet="corone",
        family="Corvidae",
        country="kenya",
        year=1949,
        eventDate="1949-12-31T10:00",
        institutionCode="MNHN",
        basisOfRecord="PreservedSpecimen",
        license="CC0-1.0",
        extra={"elevation": "900", "preparations": "skeleton"},
    ),
    dict(
        id=2,
        scientificName="Pica pica",
        genus="Pica",
        specificEpithet="pica",
        family="Corvidae",
        country="Tanzania",
        year=1950,
        eventDate="1950-12-05",
        decimalLatitude=-6.0,
        decimalLongitude=35.0,
        institutionCode="NHM",
        basisOfRecord="HumanObservation",
        extra={"elevation": "n/a"},
    ),
    dict(
        id=3,
        scientificName="Felis catus",
        genus="Felis",
        specificEpithet="catus",
        family="Felidae",
        country="Sweden",
        year=2001,
        institutionCode="NRM",
        basisOfRecord="MachineObservation",
        typeStatus="paratype",
        extra={},
    ),
    dict(
        id=4,
        scientificName="Corvus corax Linnaeus, 1758",
        family="Corvidae",
        country=None,
        year=None,
        institutionCode="NHM",
        locality="O'Brien's \"farm\" 100%_sure",
        extra={"elevation": "3000"},
    ),
    dict(
        id=5,
        scientificName="Rosa canina",
        genus="Rosa",
        specificEpithet="canina",
        family="Rosaceae",
        country="United Kingdom",
        year=1875,
        decimalLatitude=51.5,
        decimalLongitude=-0.1,
        institutionCode="K",
        locality="Kew; DROP TABLE images; --",
    ),
]
RANK_COLS = {
    "Corvidae": ("Animalia", "Chordata", "Aves", "Passeriformes"),
    "Felidae": ("Animalia", "Chordata", "Mammalia", "Carnivora"),
    "Rosaceae": ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales"),
}
EXTRA_KEYS = ("elevation", "preparations")


@pytest.fixture(scope="module")
def con():
    schema = arrow_schema()
    cols: dict[str, list] = {f.name: [] for f in schema}
    for r in ROWS:
        ranks = RANK_COLS[r["family"]]
        full = {
            "kingdom": ranks[0],
            "phylum": ranks[1],
            "class": ranks[2],
            "order": ranks[3],
            "key": f"k{r['id']}",
            "location": f"/img/{r['id']}.jpg",
            "indexed_at": dt.datetime(2024, 1, 1 + r["id"]),
            **r,
        }
        full["extra"] = json.dumps(r["extra"]) if r.get("extra") is not None else None
        for f in schema:
            cols[f.name].append(full.get(f.name))
    table = pa.table(cols, schema=schema)
    c = duckdb.connect(":memory:")
    install_fold(c)
    c.register("_rows", table)
    c.execute("CREATE TABLE images AS SELECT * FROM _rows")
    c.unregister("_rows")
    return c


@pytest.fixture(scope="module")
def taxonomy(con):
    return Taxonomy.from_connection(con)


def ids(con, flt, taxonomy=None, values=None):
    sql, params, notices = Filter.coerce(flt).to_sql(EXTRA_KEYS, taxonomy, values)
    got = sorted(r[0] for r in con.execute(f"SELECT id FROM images WHERE {sql}", params).fetchall())
    return got, notices


@pytest.mark.parametrize(
    "where, expected",
    [
        (["country=Kenya"], [0, 1]),  # any case
        (["COUNTRY=KENYA"], [0, 1]),  # field names any case too
        (["country=Kenya", "country=Tanzania"], [0, 1, 2]),  # repeated = is a set
        (["country!=Kenya"], [2, 3, 4, 5]),  # != keeps missing values
        (["country!=Kenya", "country!=Sweden"], [2, 4, 5]),  # none of them
        (["year<1950"], [0, 1, 5]),
        (["year>=1950"], [2, 3]),
        (["year>1900", "year<=1950"], [1, 2]),
        (["year=1900..1950"], [0, 1, 2]),  # inclusive range
        (["year=..1899"], [5]),
        (["year=2000.."], [3]),
        (["year=1949"], [1]),
        (["year=1949.0"], [1]),
        (["decimalLatitude<0"], [0, 2]),
        (["lat>50"], [5]),  # a Darwin Core alias
        (["has_coordinates=true"], [0, 2, 5]),
        (["has_coordinates=no"], [1, 3, 4]),
        (["has_coordinates!=true"], [1, 3, 4]),
        (["typeStatus="], [1, 2, 4, 5]),  # not given
        (["typeStatus!="], [0, 3]),  # given
        (["typeStatus~type"], [0, 3]),  # contains, any case
        (["basisOfRecord=preservedspecimen", "institutionCode=NHM"], [0]),
        (["license=cc0-1.0"], [1]),
        (["collectionCode="], [0, 1, 2, 3, 4, 5]),
        (["scientificName~corvus"], [0, 1, 4]),
        (["locality~100%_"], [4]),  # % and _ are characters, not patterns
        (["locality~O'Brien's \"farm\""], [4]),  # quotes are characters
        (["locality=Kew; DROP TABLE images; --"], [5]),  # SQL is a value
        (["locality=' OR 1=1 --"], []),
        (["elevation>=1000"], [0, 4]),  # extra key: numeric range
        (["extra.elevation<1000"], [1]),  # "n/a" is not a number: no match
        (["preparations=SKIN"], [0]),  # extra key: equality any case
        (["preparations!=skin"], [1, 2, 3, 4, 5]),
        (["preparations~ske"], [1]),
        (["indexed_at>=2024-01-04"], [3, 4, 5]),
        (["indexed_at=2024-01-02..2024-01-04"], [1, 2, 3]),  # a range of dates
        (["indexed_at=2024-01-05.."], [4, 5]),
        (["eventDate=1900-01-01..1949-12-31"], [0, 1]),  # text dates: the end day is whole
        (["eventDate<=1950-12"], [0, 1, 2]),  # ...and a month
        (["eventDate=1950.."], [2]),
        (["id<2"], [0, 1]),
    ],
)
@pytest.mark.parametrize("listed", [False, True], ids=["row-wise", "listed-values"])
def test_where_filters_select_exactly_the_matching_rows(con, where, expected, listed):
    # listed: case-blind equality on a listed column compares the stored spellings exactly
    values = ColumnValues(con.cursor) if listed else None
    assert ids(con, parse_where(where), values=values)[0] == expected


def test_listed_values_turn_folded_equality_into_exact_comparisons(con, taxonomy, monkeypatch):
    values = ColumnValues(con.cursor)
    sql, params, _ = Filter.where("genus", "=", "CORVUS").to_sql(EXTRA_KEYS, None, values)
    assert sql == '("genus" IN (?))' and params == ["Corvus"]
    sql, params, _ = Filter.where("institutionCode", "!=", "nhm").to_sql(EXTRA_KEYS, None, values)
    assert "lower(" not in sql and params == ["NHM"]
    sql, params, _ = Filter.where("genus", "=", "Nonexistus").to_sql(EXTRA_KEYS, None, values)
    assert sql == "(FALSE)" and params == []
    sql, _, _ = Filter.taxon("Corvus corax").to_sql(EXTRA_KEYS, taxonomy, values)
    assert '"genus" IN (?)' in sql and '"specificEpithet" IN (?)' in sql
    assert ids(con, {"taxon": "Corvus corax"}, taxonomy, values)[0] == [0, 4]
    # a column with more distinct values than are listed keeps the row-wise form
    monkeypatch.setattr("indexer.search.values.MAX_VALUES", 1)
    sql, _, _ = Filter.where("genus", "=", "corvus").to_sql(EXTRA_KEYS, None, ColumnValues(con.cursor))
    assert 'lower("genus")' in sql
    # catalogNumber is not a listed column: always row-wise
    sql, _, _ = Filter.where("catalogNumber", "=", "x").to_sql(EXTRA_KEYS, None, values)
    assert "lower(" in sql


def test_sql_in_values_leaves_the_table_alone(con):
    for value in ["'; DROP TABLE images; --", '" OR 1=1 --', "x') OR ('1'='1", "\\'", "%", "_", "?", "$1", "\x00"]:
        for op in ("=", "!=", "contains"):
            got, _ = ids(con, Filter.where("locality", op, value))
            assert isinstance(got, list)
    assert con.execute("SELECT count(*) FROM images").fetchall()[0][0] == len(ROWS)


def test_random_text_values_round_trip(con):
    """Equality with any stored text value (quotes, unicode, wildcards) selects exactly its rows,
    ignoring case and accents (the stored folded twin and the term go through the same fold)."""
    rng = random.Random(0)
    alphabet = "aZ '\"%_;\\-()*?$éÉeØo漢\t"
    c = duckdb.connect(":memory:")
    install_fold(c)
    values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(60)]
    c.execute(
        "CREATE TABLE images AS SELECT id, locality, CASE WHEN strlen(locality) > length(locality) "
        'THEN bioclip_fold(locality) END AS "_fold_locality", locality AS "stateProvince", '
        'CASE WHEN strlen(locality) > length(locality) THEN bioclip_fold(locality) END AS "_fold_stateProvince" '
        "FROM (SELECT unnest(range(60)) AS id, unnest($v) AS locality)",
        {"v": values},
    )
    listed = ColumnValues(c.cursor)  # stateProvince is a listed column: compared exactly
    for v in values:
        for column in ("locality", "stateProvince"):
            sql, params, _ = Filter.where(column, "=", v).to_sql((), None, listed)
            assert ("lower(" in sql) == (column == "locality")
            got = {r[0] for r in c.execute(f"SELECT id FROM images WHERE {sql}", params).fetchall()}
            assert got == {j for j, w in enumerate(values) if fold(w) == fold(v)}, (column, v)
        sql, params, _ = Filter.contains("locality", v).to_sql()
        got = {r[0] for r in c.execute(f"SELECT id FROM images WHERE {sql}", params).fetchall()}
        assert got == {j for j, w in enumerate(values) if fold(v) in fold(w)}, v


@pytest.mark.parametrize(
    "flt, message",
    [
        (["colour=red"], "no field named 'colour'"),
        (["contry=Kenya"], "did you mean 'country'?"),
        (["year>=old"], "year needs a number, got 'old'"),
        (["year=1950.5"], "year needs a whole number"),
        (["year~19"], "year is a number"),
        (["decimalLatitude=north"], "decimalLatitude needs a number"),
        (["has_coordinates=maybe"], "has_coordinates needs true or false"),
        (["has_coordinates>1"], "has_coordinates takes = true or = false"),
        (["indexed_at>yesterday"], "indexed_at needs a date"),
        (["taxon~corv"], "taxon takes ="),
        (["year>="], "has no value"),
        (["just words"], "cannot read filter"),
        ({"year": True}, "year needs a number"),
        ({"year": float("nan")}, "finite"),
        ({"year": {"~=": 1}}, "year is a number"),
        ({"year": {"like": 1}}, "unknown filter operator"),
        (["country<>Kenya"], "'<>' is not an operator"),
        (["country=~Kenya"], "'=~' is not an operator"),
        (["year=1950..1900"], "the range 1950..1900 is empty"),
    ],
)
def test_bad_filters_are_filter_errors_with_a_message(con, taxonomy, flt, message):
    with pytest.raises(FilterError, match=message.replace("?", r"\?").replace("(", r"\(")):
        ids(con, flt, taxonomy)


def test_unknown_field_error_lists_the_fields(con):
    with pytest.raises(FilterError) as err:
        ids(con, ["colour=red"])
    text = str(err.value)
    for name in ("country", "institutionCode", "year", "taxon", "has_coordinates", "elevation", "preparations"):
        assert name in text


def test_from_mapping_and_builders(con):
    assert ids(con, {"country": ["Kenya", "Tanzania"], "year": (1900, 1949)})[0] == [0, 1]
    assert ids(con, {"year": (None, 1900)})[0] == [0, 5]
    assert ids(con, {"indexed_at": (dt.date(2024, 1, 2), dt.datetime(2024, 1, 4))})[0] == [1, 2, 3]
    assert ids(con, {"indexed_at": (dt.datetime(2024, 1, 5), None)})[0] == [4, 5]
    assert ids(con, {"year": {">": 1900, "<": 2000}})[0] == [1, 2]
    assert ids(con, {"country": "", "year": None, "license": []})[0] == [0, 1, 2, 3, 4, 5]  # unset: no condition
    assert ids(con, {"country": ("Sweden", "Kenya")})[0] == [0, 1, 3]  # a tuple of texts is a set
    assert ids(con, Filter.equals("institutionCode", "NRM", "K"))[0] == [3, 5]
    assert ids(con, Filter.range("year", 1940, 1960) & Filter.has_coordinates())[0] == [2]
    assert ids(con, Filter.contains("scientificName", "linnaeus"))[0] == [4]
    assert ids(con, Filter.where("country", "=", None))[0] == [4]
    assert ids(con, [Condition("country", "in", ["Kenya"]), Condition("year", "between", (None, 1920))])[0] == [0]
    assert Filter.coerce(None) == Filter() and not Filter()
    assert ids(con, Filter())[0] == [0, 1, 2, 3, 4, 5]


def test_filters_are_hashable_values_for_caching():
    a = Filter.from_mapping({"country": ["Kenya", "Tanzania"], "year": (1900, None)})
    b = Filter((Condition("country", "in", ("Kenya", "Tanzania")), Condition("year", "between", (1900, None))))
    assert a == b and hash(a) == hash(b)
    assert Condition("country", "in", {"b", "a"}) == Condition("country", "in", {"a", "b"})
    assert {a: 1}[b] == 1
    assert a.without("COUNTRY") == Filter((Condition("year", "between", (1900, None)),))
    assert a.describe() == "country in Kenya, Tanzania; year 1900.."


@pytest.mark.parametrize(
    "item, cond",
    [
        ("country=Kenya", Condition("country", "=", "Kenya")),
        ("  country == Kenya ", Condition("country", "=", "Kenya")),
        ("locality=a=b", Condition("locality", "=", "a=b")),  # everything after the operator
        ('country="Kenya"', Condition("country", "=", '"Kenya"')),  # quotes are kept: a value is a value
        ("year>=1900", Condition("year", ">=", "1900")),
        ("year=1900..1950", Condition("year", "between", ("1900", "1950"))),
        ("catalogNumber=A..B", Condition("catalogNumber", "=", "A..B")),  # not numbers: not a range
        ("eventDate=1900-01-01..1950-12", Condition("eventDate", "between", ("1900-01-01", "1950-12"))),
        ("locality~forest", Condition("locality", "contains", "forest")),
        ("typeStatus=", Condition("typeStatus", "=", None)),
        ("dwc:habitat=forest edge", Condition("dwc:habitat", "=", "forest edge")),
    ],
)
def test_parse_where(item, cond):
    assert parse_where([item]).conditions == (cond,)


@pytest.mark.parametrize("listed", [False, True], ids=["row-wise", "listed-values"])
def test_taxon_filters_select_everything_below(con, taxonomy, listed):
    v = ColumnValues(con.cursor) if listed else None
    assert ids(con, {"taxon": "Corvidae"}, taxonomy, v)[0] == [0, 1, 2, 4]
    assert ids(con, {"taxon": "corvus"}, taxonomy, v)[0] == [0, 1, 4]  # genus, any case
    assert ids(con, {"taxon": "Corvus corax"}, taxonomy, v)[0] == [0, 4]  # row 4 has only a scientific name
    assert ids(con, {"taxon": "common raven"}, taxonomy, v)[0] == [0, 4]  # vernacular
    assert ids(con, {"taxon": "Aves"}, taxonomy, v)[0] == [0, 1, 2, 4]
    assert ids(con, {"taxon": ["Felidae", "Rosa"]}, taxonomy, v)[0] == [3, 5]
    assert ids(con, ["taxon!=Corvidae"], taxonomy, v)[0] == [3, 5]
    got, notices = ids(con, {"taxon": "Nonexistus"}, taxonomy, v)
    assert got == [] and "does not occur in this collection" in notices[0]
    got, notices = ids(con, {"taxon": "Corvus coraxx"}, taxonomy, v)
    assert got == [] and "did you mean Corvus corax?" in notices[0]


def test_taxon_filter_without_a_taxonomy_matches_names(con):
    assert ids(con, {"taxon": "corvidae"})[0] == [0, 1, 2, 4]


def test_available_fields_lists_columns_extras_and_specials():
    names = [f for f, _ in available_fields(EXTRA_KEYS)]
    assert {"country", "year", "institutionCode", "elevation", "taxon", "has_coordinates"} <= set(names)
    assert "meta_hash" not in names
    assert dict(available_fields())["year"] == "integer"
