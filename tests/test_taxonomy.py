"""Resolving names against a collection's own taxonomy."""

from __future__ import annotations

import duckdb
import pytest

from indexer.search.taxonomy import Taxonomy, looks_like_scientific_name, normalise_name

AVES = ("Animalia", "Chordata", "Aves")
ROWS = [
    # kingdom, phylum, class, order, family, genus, specificEpithet, scientificName, vernacularName, count
    (*AVES, "Passeriformes", "Corvidae", "Corvus", "corax", "Corvus corax", "common raven", 5),
    (*AVES, "Passeriformes", "Corvidae", "Corvus", "corax", "Corvus corax Linnaeus, 1758", "Raven", 2),
    (*AVES, "Passeriformes", "Corvidae", "Corvus", "corone", "Corvus corone", "carrion crow", 3),
    # the same genus without its family (messy data): still one taxon
    (*AVES, "Passeriformes", None, "Corvus", None, None, "crows", 1),
    # lower-case spelling of the same family: still one taxon
    (*AVES, "passeriformes", "corvidae", "Pica", "pica", "Pica pica", "Eurasian magpie", 4),
    # only a scientific name
    (None, None, None, None, None, None, None, "Garrulus glandarius (Linnaeus, 1758)", "Eurasian jay", 2),
    # a homonym: Morus, the mulberries and the gannets
    (
        "Plantae",
        "Tracheophyta",
        "Magnoliopsida",
        "Rosales",
        "Moraceae",
        "Morus",
        "alba",
        "Morus alba",
        "white mulberry",
        3,
    ),
    (
        "Animalia",
        "Chordata",
        "Aves",
        "Suliformes",
        "Sulidae",
        "Morus",
        "bassanus",
        "Morus bassanus",
        "northern gannet",
        6,
    ),
    ("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Felis", "catus", "Felis catus", "domestic cat", 7),
]


@pytest.fixture(scope="module")
def tax():
    return Taxonomy(ROWS)


def names(matches):
    return [(m.rank, m.name) for m in matches]


@pytest.mark.parametrize(
    "query, expected",
    [
        ("Corvidae", [("family", "Corvidae")]),
        ("CORVIDAE.", [("family", "Corvidae")]),
        ("  corvus   corax ", [("species", "Corvus corax")]),
        ("Corvus corax Linnaeus, 1758", [("species", "Corvus corax")]),
        ("Corvus corax L.", [("species", "Corvus corax")]),  # authorship not in the data
        ("common raven", [("species", "Corvus corax")]),
        ("raven", [("species", "Corvus corax")]),
        ("crows", [("genus", "Corvus")]),  # a vernacular name at genus rank
        ("Aves", [("class", "Aves")]),
        ("family Corvidae", [("family", "Corvidae")]),
        ("genus corvus", [("genus", "Corvus")]),
        ("Garrulus glandarius", [("species", "Garrulus glandarius")]),
        ("Eurasian jay", [("species", "Garrulus glandarius")]),
        ("Moraceae Morus", [("genus", "Morus")]),  # a parent chooses among homonyms
        ("Animalia Chordata Aves Passeriformes Corvidae Corvus corax", [("species", "Corvus corax")]),
        ("Aves Corvus", [("genus", "Corvus")]),
        ("Plantae Corvus", []),
        ("Nonexistus", []),
        ("", []),
    ],
)
def test_resolve(tax, query, expected):
    assert names(tax.resolve(query)) == expected


def test_counts_include_everything_below_and_merge_case_and_partial_lineages(tax):
    (corvidae,) = tax.resolve("corvidae")
    assert corvidae.count == 5 + 2 + 3 + 4
    assert corvidae.lineage[:5] == (
        "Animalia",
        "Chordata",
        "Aves",
        "Passeriformes",
        "Corvidae",
    )  # the majority spelling
    (corvus,) = tax.resolve("Corvus")
    assert corvus.count == 11 and corvus.lineage[4] == "Corvidae" and corvus.common_name == "crows"
    (raven,) = tax.resolve("Corvus corax")
    assert raven.count == 7 and raven.common_name == "common raven"  # the most frequent vernacular
    assert raven.matched == "scientific name" and tax.resolve("raven")[0].matched == "common name"
    assert raven.taxon().taxonomic_name == "Animalia Chordata Aves Passeriformes Corvidae Corvus corax"


def test_homonyms_resolve_to_all_and_say_which(tax):
    matches = tax.resolve("morus")
    assert names(matches) == [("genus", "Morus"), ("genus", "Morus")]
    assert matches[0].count == 6 and matches[0].lineage[0] == "Animalia"  # most images first
    assert [m.describe() for m in matches] == ["genus Morus (Animalia, Sulidae)", "genus Morus (Plantae, Moraceae)"]
    assert tax.resolve("Moraceae Morus")[0].lineage[0] == "Plantae"
    con = duckdb.connect(":memory:")
    con.execute(
        'CREATE TABLE images (kingdom VARCHAR, phylum VARCHAR, "class" VARCHAR, "order" VARCHAR, family VARCHAR, '
        'genus VARCHAR, "specificEpithet" VARCHAR, "scientificName" VARCHAR)'
    )
    con.execute(
        "INSERT INTO images VALUES ('Plantae', NULL, NULL, NULL, 'Moraceae', 'Morus', 'alba', NULL), "
        "('Animalia', NULL, NULL, NULL, 'Sulidae', 'Morus', 'bassanus', NULL)"
    )
    for m, kingdom in zip(matches, ("Animalia", "Plantae")):
        sql, params = m.filter_sql()
        assert con.execute(f"SELECT kingdom FROM images WHERE {sql}", params).fetchall() == [(kingdom,)]


def test_suggest_and_close_matches(tax):
    assert names(tax.suggest("cor"))[:3] == [("family", "Corvidae"), ("genus", "Corvus"), ("species", "Corvus corax")]
    assert ("species", "Pica pica") in names(tax.suggest("magpie"))
    assert names(tax.close_matches("Corvus coraxx")) == [("species", "Corvus corax")]
    assert names(tax.close_matches("Corvidea")) == [("family", "Corvidae")]
    assert tax.close_matches("zebra") == []


def test_taxa_by_rank(tax):
    assert [m.name for m in tax.taxa("family")] == ["Corvidae", "Felidae", "Sulidae", "Moraceae"]
    assert len(tax) == len(tax.taxa())


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Corvus corax", True),
        ("Corvidae", True),
        ("Passeriformes", True),
        ("Rosaceae", True),
        ("Corvus corax Linnaeus, 1758", True),
        ("Corvus", False),
        ("a bird on a branch", False),
        ("Big", False),
        ("corvus corax", False),
        ("Red Fox", False),
        ("family Corvidae", True),
        ("genus Corvus", True),
        ("Salmo trutta fario", True),
        ("species of bird", False),
    ],
)
def test_looks_like_scientific_name(text, expected):
    assert looks_like_scientific_name(text) is expected


def test_normalise_name():
    assert normalise_name("  Corvus\tCORAX. ") == "corvus corax"
    assert normalise_name("Ｃorvus") == "corvus"  # full-width letters
