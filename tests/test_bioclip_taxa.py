"""Taxa and BioCLIP's text forms: the exact strings BioCLIP was trained and evaluated on."""

from __future__ import annotations

import pytest

from bioclip import RANKS, Taxon, TextForm, taxon_prompt, taxon_text

RAVEN_LINEAGE = ["Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corax"]


@pytest.fixture
def raven() -> Taxon:
    return Taxon.from_lineage(RAVEN_LINEAGE, common_name="common raven")


def test_all_five_forms_exactly(raven):
    # Strings as in BioCLIP's training captions (Imageomics/bioclip make_wds.make_txt).
    expected = {
        TextForm.SCIENTIFIC: "a photo of Corvus corax.",
        TextForm.COMMON: "a photo of common raven.",
        TextForm.TAXONOMIC: "a photo of Animalia Chordata Aves Passeriformes Corvidae Corvus corax.",
        TextForm.SCIENTIFIC_COMMON: "a photo of Corvus corax with common name common raven.",
        TextForm.TAXONOMIC_COMMON: (
            "a photo of Animalia Chordata Aves Passeriformes Corvidae Corvus corax with common name common raven."
        ),
    }
    for form, prompt in expected.items():
        assert taxon_prompt(raven, form) == prompt
        assert taxon_prompt(raven, form.value) == prompt
        assert f"a photo of {taxon_text(raven, form)}." == prompt
    assert taxon_prompt(raven) == expected[TextForm.TAXONOMIC_COMMON]
    assert taxon_text(raven) == (
        "Animalia Chordata Aves Passeriformes Corvidae Corvus corax with common name common raven"
    )


def test_missing_common_name_falls_back():
    taxon = Taxon.from_lineage(RAVEN_LINEAGE)
    assert taxon_prompt(taxon, TextForm.COMMON) == "a photo of Corvus corax."
    assert taxon_prompt(taxon, TextForm.SCIENTIFIC_COMMON) == "a photo of Corvus corax."
    assert taxon_prompt(taxon, TextForm.TAXONOMIC_COMMON) == (
        "a photo of Animalia Chordata Aves Passeriformes Corvidae Corvus corax."
    )


def test_higher_rank_forms():
    family = Taxon.from_name("Corvidae", "family", kingdom="Animalia", order="Passeriformes", common_name="crows")
    assert family.rank == "family"
    assert taxon_prompt(family, TextForm.SCIENTIFIC) == "a photo of Corvidae."
    assert taxon_prompt(family, TextForm.TAXONOMIC) == "a photo of Animalia Passeriformes Corvidae."
    assert taxon_prompt(family, TextForm.TAXONOMIC_COMMON) == (
        "a photo of Animalia Passeriformes Corvidae with common name crows."
    )


def test_properties(raven):
    assert RANKS == ("kingdom", "phylum", "class", "order", "family", "genus", "species")
    assert raven.rank == "species"
    assert raven.species == "corax"
    assert raven.class_ == "Aves"
    assert raven.scientific_name == "Corvus corax"
    assert raven.taxonomic_name == "Animalia Chordata Aves Passeriformes Corvidae Corvus corax"
    assert raven.name_at("species") == "Corvus corax"
    assert raven.name_at("class") == "Aves"
    assert raven.lineage() == tuple(RAVEN_LINEAGE)
    assert raven.as_dict()["class"] == "Aves" and raven.as_dict()["common_name"] == "common raven"
    assert str(raven) == "Corvus corax"


def test_at_rank(raven):
    genus = raven.at_rank("genus")
    assert genus == Taxon.from_lineage(RAVEN_LINEAGE[:6])
    assert genus.common_name is None  # a species' common name does not name its genus
    assert genus.scientific_name == "Corvus"
    assert raven.at_rank("family").taxonomic_name == "Animalia Chordata Aves Passeriformes Corvidae"
    assert raven.at_rank("species") is raven
    with pytest.raises(ValueError):
        genus.at_rank("species")
    with pytest.raises(ValueError):
        Taxon(kingdom="Animalia", genus="Corvus").at_rank("family")
    with pytest.raises(ValueError):
        raven.at_rank("tribe")


def test_normalisation_and_binomial_in_species_slot():
    taxon = Taxon(kingdom=" animalia ", family="CORVIDAE", genus="corvus", species="Corax", phylum="")
    assert (taxon.kingdom, taxon.phylum, taxon.family, taxon.genus, taxon.species) == (
        "Animalia",
        None,
        "Corvidae",
        "Corvus",
        "corax",
    )
    assert Taxon(species="Corvus corax") == Taxon(genus="Corvus", species="corax")
    assert Taxon(genus="Corvus", species="corvus corax").species == "corax"
    assert Taxon(genus="Canis", species="lupus familiaris").scientific_name == "Canis lupus familiaris"
    assert Taxon(genus="Corvus", common_name="  ").common_name is None
    assert Taxon(genus="Corvus", species=float("nan")).rank == "genus"  # pandas' missing value


def test_invalid_taxa():
    with pytest.raises(ValueError):
        Taxon()
    with pytest.raises(ValueError):
        Taxon(common_name="common raven")
    with pytest.raises(ValueError, match="genus"):
        Taxon(species="corax")


def test_from_lineage_mapping_with_darwin_core_names():
    row = {
        "kingdom": "Animalia",
        "phylum": "Chordata",
        "class": "Aves",
        "order": "Passeriformes",
        "family": "Corvidae",
        "genus": "Corvus",
        "specificEpithet": "corax",
        "vernacularName": "common raven",
    }
    assert Taxon.from_lineage(row) == Taxon.from_lineage(RAVEN_LINEAGE, common_name="common raven")
    assert Taxon.from_lineage({"class_": "Aves"}).class_ == "Aves"
    assert Taxon.from_lineage(row, common_name="raven").common_name == "raven"
    with pytest.raises(ValueError, match="catalogNumber"):
        Taxon.from_lineage({**row, "catalogNumber": "X1"})
    assert Taxon.from_lineage({**row, "catalogNumber": "X1"}, strict=False).genus == "Corvus"
    assert Taxon.from_lineage(["Animalia", "Chordata", None, "Passeriformes"]).rank == "order"
    with pytest.raises(ValueError):
        Taxon.from_lineage(RAVEN_LINEAGE + ["extra"])
    with pytest.raises(ValueError):
        Taxon.from_lineage("Animalia")


def test_from_name():
    assert Taxon.from_name("Corvus corax", "species") == Taxon(genus="Corvus", species="corax")
    assert Taxon.from_name("corax", "species", genus="Corvus", family="Corvidae").taxonomic_name == (
        "Corvidae Corvus corax"
    )
    assert Taxon.from_name("Aves", "class", kingdom="Animalia").class_ == "Aves"
    assert Taxon.from_name("Passeriformes", "order", class_="Aves").class_ == "Aves"
    assert Taxon.from_name("Corvus", "genus", common_name="crows").common_name == "crows"
    with pytest.raises(ValueError):
        Taxon.from_name("corax", "species")  # epithet without genus
    with pytest.raises(ValueError):
        Taxon.from_name("Corvus corax", "species", genus="Pica")
    with pytest.raises(ValueError):
        Taxon.from_name("Corvidae", "family", genus="Corvus")  # genus is not above family
    with pytest.raises(ValueError):
        Taxon.from_name("Corvidae", "familia")


def test_from_scientific_name():
    assert Taxon.from_scientific_name("Corvus corax") == Taxon(genus="Corvus", species="corax")
    assert Taxon.from_scientific_name("Corvus corax Linnaeus, 1758").scientific_name == "Corvus corax"
    assert Taxon.from_scientific_name("Canis lupus familiaris").scientific_name == "Canis lupus"
    assert Taxon.from_scientific_name("Corvus").rank == "genus"
    assert Taxon.from_scientific_name("Corvus sp.").rank == "genus"
    assert Taxon.from_scientific_name("Corvidae", rank="family") == Taxon(family="Corvidae")
    assert Taxon.from_scientific_name("Corvus corax", common_name="common raven").common_name == "common raven"
    with pytest.raises(ValueError):
        Taxon.from_scientific_name("")
    with pytest.raises(ValueError):
        Taxon.from_scientific_name("Corvus", rank="species")


def test_taxon_is_hashable_and_frozen(raven):
    assert len({raven, Taxon.from_lineage(RAVEN_LINEAGE, common_name="common raven")}) == 1
    with pytest.raises(AttributeError):
        raven.genus = "Pica"  # type: ignore[misc]
    with pytest.raises(TypeError):
        taxon_text("Corvus corax")  # type: ignore[arg-type]
