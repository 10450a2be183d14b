"""The Darwin Core vocabularies: each spelling seen in real archives maps to one value, the mapping
is idempotent, nothing is guessed (no fuzzy country matches), and the text fold is the same in
Python and in DuckDB."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import duckdb
import pytest

from indexer.dwc import (
    BASIS_OF_RECORD,
    canonical_basis,
    canonical_license,
    canonical_rank,
    derive_taxon,
    fold,
    install_fold,
    license_url,
    normalise_pair,
    parse_names,
    resolve_country,
)
from indexer.dwc.countries import PLACEHOLDER
from indexer.dwc.licenses import _CANONICAL


@pytest.mark.parametrize(
    "value, expected",
    [
        ("PRESERVED_SPECIMEN", "PreservedSpecimen"),
        ("PreservedSpecimen", "PreservedSpecimen"),
        ("preserved specimen", "PreservedSpecimen"),
        ("Specimen", "PreservedSpecimen"),
        ("specimen", "PreservedSpecimen"),
        ("S", "PreservedSpecimen"),
        ("HUMAN_OBSERVATION", "HumanObservation"),
        ("HumanObservation", "HumanObservation"),
        ("MACHINE_OBSERVATION", "MachineObservation"),
        ("FOSSIL_SPECIMEN", "FossilSpecimen"),
        ("Observation", "Observation"),  # generic: not guessed to be a human's
        ("Observation, something", "Observation"),
        ("UNKNOWN", "Occurrence"),  # GBIF's deprecation notes
        ("LITERATURE", "MaterialCitation"),
        ("MATERIAL_SAMPLE", "MaterialSample"),
        ("herbarium sheet", "PreservedSpecimen"),
        ("a pressed flower", None),
        (None, None),
    ],
)
def test_basis_of_record(value, expected):
    assert canonical_basis(value) == expected


def test_basis_of_record_is_idempotent():
    assert [canonical_basis(v) for v in BASIS_OF_RECORD] == list(BASIS_OF_RECORD)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("CC0_1_0", "CC0-1.0"),
        ("CC_BY_4_0", "CC-BY-4.0"),
        ("CC_BY_NC_4_0", "CC-BY-NC-4.0"),
        ("http://creativecommons.org/licenses/by/4.0/", "CC-BY-4.0"),
        ("https://creativecommons.org/licenses/by-nc/4.0/legalcode", "CC-BY-NC-4.0"),
        ("http://creativecommons.org/licenses/by-nc/4.0/deed.en", "CC-BY-NC-4.0"),
        ("https://www.creativecommons.org/licenses/by-sa/4.0/legalcode#languages", "CC-BY-SA-4.0"),
        ("https://i.creativecommons.org/l/by-nc/4.0/80x15.png", "CC-BY-NC-4.0"),
        ("http://creativecommons.org/licences/by/4.0", "CC-BY-4.0"),
        ("https://creativecommons.org/licenses/by-nc-sa/4.0/us/", "CC-BY-NC-SA-4.0"),  # no 4.0 ports
        ("http://creativecommons.org/licenses/by/3.0/us/", "CC-BY-3.0-US"),  # an SPDX port
        ("http://creativecommons.org/publicdomain/zero/1.0/", "CC0-1.0"),
        ("http://creativecommons.org/publicdomain/mark/1.0/", "CC-PDM-1.0"),
        ("Public Domain", "CC-PDM-1.0"),
        ("No known copyright restrictions apply.", "CC-PDM-1.0"),
        ("CC BY-NC 4.0", "CC-BY-NC-4.0"),
        ("cc-by-nc-4.0", "CC-BY-NC-4.0"),
        ("CC-BY", "CC-BY-4.0"),  # no version: the current one (GBIF's rule)
        ("CC BY-NC-SA (Attribution-NonCommercial-ShareAlike)", "CC-BY-NC-SA-4.0"),
        ("CC BY-SA-NC, no commercial use", "CC-BY-NC-SA-4.0"),
        ("Creative Commons Attribution-NonCommercial 4.0 International", "CC-BY-NC-4.0"),
        ("Creative Commons BY-SA 4.0 license", "CC-BY-SA-4.0"),
        ("[Copyright] Field Museum of Natural History - CC BY-NC", "CC-BY-NC-4.0"),
        ("CC0", "CC0-1.0"),
        ("cc-zero", "CC0-1.0"),
        ("All rights reserved", None),
        ("http://www.inbo.be/en/norms-for-data-use", None),
        ("", None),
    ],
)
def test_licences(value, expected):
    assert canonical_license(value) == expected


def test_licences_are_idempotent_and_link_to_their_pages():
    assert all(canonical_license(i) == i for i in _CANONICAL.values())
    assert license_url("CC-BY-NC-4.0") == "https://creativecommons.org/licenses/by-nc/4.0/"
    assert license_url("CC-BY-3.0-US") == "https://creativecommons.org/licenses/by/3.0/us/"
    assert license_url("CC0-1.0") == "https://creativecommons.org/publicdomain/zero/1.0/"
    assert license_url("http://www.inbo.be/en/norms-for-data-use") == "http://www.inbo.be/en/norms-for-data-use"
    assert license_url("javascript:alert(1)") is None and license_url("All rights reserved") is None


@pytest.mark.parametrize(
    "value, code",
    [
        ("USA", "US"),
        ("United States", "US"),
        ("United States of America", "US"),
        ("U.S.A.", "US"),
        ("us", "US"),
        ("UK", "GB"),
        ("Great Britain", "GB"),
        ("England", "GB"),
        ("Russia", "RU"),
        ("Ivory Coast", "CI"),
        ("Cote d'Ivoire", "CI"),
        ("Deutschland", "DE"),
        ("DEU", "DE"),
        ("276", "DE"),
        ("Viet Nam", "VN"),
        ("Vietnam", "VN"),
        ("Czech Republic", "CZ"),
        ("MYANMAR", "MM"),
        ("Burma", "MM"),
        ("India*", "IN"),
        ("The Netherlands", "NL"),
        ("Trinidad & Tobago", "TT"),
        ("St. Lucia", "LC"),
        ("XK", "XK"),
        ("NA", "NA"),  # Namibia, not "n/a"
        ("Malay", None),  # no fuzzy matches: a wrong country is worse than none
        ("Korea", None),
        ("golfe du bengale", None),
        ("North Borneo", None),
    ],
)
def test_countries(value, code):
    found = resolve_country(value)
    assert (found.code if found is not None else None) == code


@pytest.mark.parametrize("value", ["N/A", "n.a.", "Unknown", "inconnu", "Not specified", "?", "ZZ", "", "  ", None])
def test_country_placeholders_mean_not_given(value):
    assert resolve_country(value) is PLACEHOLDER


def test_country_and_code_fill_each_other_and_the_code_wins_a_conflict():
    def pair(country, code):
        fix = normalise_pair(country, code)
        return fix.country, fix.code, fix.status

    assert pair(None, "JP") == ("Japan", "JP", "ok")
    assert pair("USA", None) == ("United States", "US", "ok")
    assert pair("Canada", "US") == ("United States", "US", "conflict")
    assert pair("golfe du bengale", None) == ("golfe du bengale", None, "unresolved")
    assert pair("N/A", None) == (None, None, "empty")


@pytest.mark.parametrize(
    "value, rank",
    [("SPECIES", "species"), ("Species", "species"), ("sp.", "species"), ("subsp.", "subspecies"), ("ssp", "subspecies"),
     ("var.", "variety"), ("f.", "form"), ("forma", "form"), ("INFRASPECIFIC_NAME", "infraspecificname"),
     ("Subfamily", "subfamily"), ("UNRANKED", None), ("Art", None), (None, None)],
)  # fmt: skip
def test_ranks(value, rank):
    assert canonical_rank(value) == rank


def _derive(name, rank=None, genus=None, epithet=None, infra=None):
    parsed = parse_names([(name, canonical_rank(rank))])[(name, canonical_rank(rank))] if name else None
    return derive_taxon(
        scientific_name=name,
        taxon_rank=rank,
        genus=genus,
        specific_epithet=epithet,
        infraspecific_epithet=infra,
        parsed=parsed,
    )


def test_names_are_parsed_for_their_genus_epithet_and_rank():
    assert _derive("Felis catus Linnaeus, 1758") == {
        "genus": "Felis",
        "specificEpithet": "catus",
        "taxonRank": "species",
    }
    assert _derive("Coleoptera", "order") == {"fill_rank": "order", "fill_name": "Coleoptera"}  # not a genus
    assert _derive("Felinae", "SUBFAMILY") == {
        "taxonRank": "subfamily",
        "fill_rank": "subfamily",
        "fill_name": "Felinae",
    }
    assert _derive("Corvus") == {"genus": "Corvus"}
    assert _derive("Coleoptera") == {}  # no rank, and -ptera is an order's ending: nothing guessed
    assert _derive("Abies alba var. acutifolia")["infraspecificEpithet"] == "acutifolia"
    assert _derive("Abies alba var. acutifolia")["taxonRank"] == "variety"
    # GBIF 2013 wrote the binomial in specificEpithet; placeholders are no epithet
    assert _derive("Tetraodon fluviatilis Hamilton, 1822", None, "Tetraodon", "Tetraodon fluviatilis") == {
        "specificEpithet": "fluviatilis",
        "taxonRank": "species",
    }
    assert _derive("Galium spec.", None, "Galium", "spec.") == {"specificEpithet": None}
    assert _derive("Poa bulbosa agg. L.", None, "Poa", "bulbosa agg.")["specificEpithet"] == "bulbosa"
    assert _derive("Pica pica", None, "Corvus") == {}  # the name disagrees with the record's genus: untrusted
    assert _derive("Bombus sp.") == {"genus": "Bombus"}  # informal: the genus is known, the species is not
    assert _derive("Carabus cf. auratus") == {"genus": "Carabus"}
    assert _derive("noch unbestimmt !!!", None, "noch unbestimmt !!!") == {}
    assert _derive("Incertae sedis") == {}


def test_the_name_parser_is_gbifs_and_a_foreign_nameparser_is_named(tmp_path):
    from indexer.dwc.names import parser

    assert hasattr(parser(), "parse_all")
    # PyPI's other "nameparser" (people's names) has the same import name: say so, never mis-parse
    fake = tmp_path / "nameparser"
    fake.mkdir()
    (fake / "__init__.py").write_text("class HumanName:\n    pass\n")
    code = textwrap.dedent(
        """
        from indexer.dwc.names import parser
        from indexer.errors import NameParserError
        try:
            parser()
        except NameParserError as exc:
            print("ERR", exc)
        """
    )
    env_path = f"{tmp_path}"
    out = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {env_path!r}); exec({code!r})"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.startswith("ERR"), out.stderr
    assert "pip uninstall nameparser" in out.stdout and "gbif-name-parser" in out.stdout and str(fake) in out.stdout


def test_the_fold_is_the_same_in_python_and_duckdb():
    con = duckdb.connect()
    install_fold(con)
    rng = random.Random(1)
    alphabet = "aAéÉèçÇñÑøØłŁæÆœßđıİöÖüåÅ ĳ-'漢Ωω\u0301"
    values = [
        "Tomás Gómez",
        "ÆRØ",
        "Łódź",
        "Straße",
        *("".join(rng.choice(alphabet) for _ in range(8)) for _ in range(300)),
    ]
    got = [r[0] for r in con.execute("SELECT bioclip_fold(v) FROM unnest(?) t(v)", [values]).fetchall()]
    assert got == [fold(v) for v in values]
    assert fold("Tomás Gómez") == "tomas gomez" and fold("Straße") == "strasse" and fold("ÆRØ") == "aero"
