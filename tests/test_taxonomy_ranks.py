"""The collection's taxonomy honours taxonRank and knows the ranks beyond the seven."""

from __future__ import annotations

import duckdb

from indexer.search.taxonomy import ROW_COLUMNS, Taxonomy


def row(count=1, **values):
    return (*(values.get(c) for c in ROW_COLUMNS), count)


ROWS = [
    row(kingdom="Animalia", phylum="Arthropoda", **{"class": "Insecta"}, scientificName="Coleoptera", taxonRank="order", count=3),
    row(kingdom="Animalia", **{"class": "Insecta", "order": "Coleoptera"}, family="Carabidae", subfamily="Carabinae",
        tribe="Carabini", genus="Carabus", specificEpithet="auratus", scientificName="Carabus auratus", count=2),
    row(kingdom="Animalia", family="Felidae", subfamily="Felinae", genus="Felis", specificEpithet="catus",
        scientificName="Felis catus", vernacularName="cat", count=4),
    row(kingdom="Animalia", family="Felidae", scientificName="Felinae", taxonRank="subfamily", subfamily="Felinae",
        vernacularName="small cats", count=1),
    row(kingdom="Plantae", family="Pinaceae", genus="Abies", specificEpithet="alba", infraspecificEpithet="acutifolia",
        taxonRank="variety", scientificName="Abies alba var. acutifolia", count=2),
    row(kingdom="Animalia", family="Hominidae", genus="Homo", specificEpithet="sapiens", infraspecificEpithet="sapiens",
        taxonRank="subspecies", scientificName="Homo sapiens sapiens", count=1),
]  # fmt: skip


def describe(matches):
    return [m.describe() for m in matches]


def test_a_uninomial_of_a_higher_rank_is_no_phantom_genus():
    tax = Taxonomy([row(kingdom="Animalia", **{"class": "Insecta"}, scientificName="Coleoptera", taxonRank="order")])
    assert describe(tax.resolve("Coleoptera")) == []  # the build fills "order"; no genus is made up here
    tax = Taxonomy(ROWS)
    assert tax.taxa("genus") and "Coleoptera" not in [m.name for m in tax.taxa("genus")]
    assert describe(tax.resolve("Insecta Coleoptera")) == ["order Coleoptera"]


def test_ranks_between_the_seven():
    tax = Taxonomy(ROWS)
    (felinae,) = tax.resolve("Felinae")
    assert (felinae.rank, felinae.count, felinae.common_name) == ("subfamily", 5, "small cats")
    assert felinae.higher() == ["Animalia", "Felidae"] and felinae.column == "subfamily"
    assert describe(tax.resolve("tribe Carabini")) == ["tribe Carabini"]
    assert describe(tax.resolve("small cats")) == ["subfamily Felinae"]
    assert describe(tax.resolve("genus Felinae")) == []


def test_ranks_below_species():
    tax = Taxonomy(ROWS)
    (variety,) = tax.resolve("Abies alba var. acutifolia")
    assert (variety.rank, variety.name, variety.count) == ("variety", "Abies alba var. acutifolia", 2)
    assert describe(tax.resolve("abies alba acutifolia")) == ["variety Abies alba var. acutifolia"]
    assert variety.taxon().taxonomic_name.endswith("Abies alba var. acutifolia")
    (human,) = tax.resolve("Homo sapiens sapiens")
    assert (human.rank, human.name) == ("subspecies", "Homo sapiens sapiens")  # zoological: no marker
    assert describe(tax.resolve("Abies alba")) == ["species Abies alba"]


def test_the_sql_of_a_taxon_beyond_the_seven_selects_it():
    tax = Taxonomy(ROWS)
    con = duckdb.connect()
    con.execute(
        'CREATE TABLE images (id INTEGER, genus VARCHAR, "specificEpithet" VARCHAR, "infraspecificEpithet" VARCHAR, '
        "subfamily VARCHAR, tribe VARCHAR)"
    )
    con.execute(
        "INSERT INTO images VALUES (1, 'Abies', 'alba', 'acutifolia', NULL, NULL), (2, 'Abies', 'alba', NULL, NULL, NULL), "
        "(3, 'Felis', 'catus', NULL, 'Felinae', NULL), (4, 'Carabus', 'auratus', NULL, 'Carabinae', 'Carabini')"
    )
    for name, expected in [("Abies alba var. acutifolia", [1]), ("Felinae", [3]), ("Carabini", [4])]:
        (m,) = tax.resolve(name)
        sql, params = m.filter_sql()
        assert [
            r[0] for r in con.execute(f"SELECT id FROM images WHERE {sql} ORDER BY id", params).fetchall()
        ] == expected
