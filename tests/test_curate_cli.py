"""``bioclip-index curate`` / ``evaluate`` as a user runs them, on the curated test bed and on a
real build of pictures (tiny model: structure only)."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
from click.testing import CliRunner

from indexer.cli.index import main

pytestmark = pytest.mark.slow


@pytest.fixture
def collection(curated_bed, tmp_path):
    path = tmp_path / "c"
    shutil.copytree(curated_bed.path, path)
    return path


def run(*args: str) -> str:
    result = CliRunner().invoke(main, [*args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_curate_counts_lists_and_formats(collection, tmp_path):
    out = run("curate", str(collection), "--format", "json")
    counts = json.loads(out)
    assert set(counts) == {"misidentified", "unidentified", "duplicates", "outliers"}
    assert counts["misidentified"] >= 30 and counts["duplicates"] == 3 and counts["outliers"] >= 8
    table = run("curate", str(collection), "--kind", "misidentified", "--limit", "5", "--no-update")
    assert "start_rank" in table and "suggested" in table and table.count("\n") >= 8
    rows = list(
        csv.DictReader(
            io.StringIO(run("curate", str(collection), "--kind", "unidentified", "--format", "csv", "--no-update"))
        )
    )
    assert rows and rows[0]["suggested"] and rows[0]["catalogNumber"].startswith("CAT-")
    dwc = tmp_path / "ident.csv"
    run("curate", str(collection), "--kind", "misidentified", "--format", "dwc", "--out", str(dwc), "--no-update")
    ident = list(csv.DictReader(dwc.open(encoding="utf-8")))
    assert ident and {r["identificationVerificationStatus"] for r in ident} == {"unverified"}
    assert all(r["identifiedBy"].startswith("bioclip-search") and r["taxonRank"] for r in ident)
    only = list(
        csv.DictReader(
            io.StringIO(
                run(
                    "curate",
                    str(collection),
                    "--kind",
                    "misidentified",
                    "--format",
                    "csv",
                    "--where",
                    "institutionCode=NHM",
                    "--no-update",
                )
            )
        )
    )
    assert only and {r["institutionCode"] for r in only} == {"NHM"}
    dup = json.loads(
        run(
            "curate",
            str(collection),
            "--kind",
            "duplicates",
            "--format",
            "json",
            "--duplicate-cosine",
            "0.94",
            "--no-update",
        )
    )
    assert len(dup) == 4 and all(len(d["members"]) == 2 for d in dup)


def test_evaluate_prints_accuracy_and_calibration(collection):
    text = run("evaluate", str(collection), "--no-update")
    assert "zeroshot_top1" in text and "calibration at species" in text and "ECE" in text
    data = json.loads(run("evaluate", str(collection), "--format", "json", "--rank", "family", "--no-update"))
    assert data["calibration_rank"] == "family" and len(data["ranks"]) == 7


def test_bad_input_is_a_one_line_error(collection, tmp_path):
    result = CliRunner().invoke(
        main, ["curate", str(collection), "--kind", "misidentified", "--rank", "tribe", "--no-update"]
    )
    assert result.exit_code == 1 and "unknown rank 'tribe'" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["curate", str(collection), "--reference-labels", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "reference labels" in result.output


def test_reference_labels_from_a_local_folder(collection, curated_bed, curate_model, tmp_path):
    """A Tree-of-Life-shaped label file (txt_emb_species.npy (d, N) + .json): the bed's species and
    others; each image's top reference species is its own."""
    import numpy as np
    from curatebed import _taxa, species_lineages

    from bioclip.taxa import TextForm
    from indexer.curate.store import CurationStore
    from indexer.store import Collection

    lineages = species_lineages()
    others = [("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Rosa", "Rosa canina")]
    names = lineages + others
    emb = curate_model.embed_taxa(_taxa(names), form=TextForm.TAXONOMIC_COMMON, ensemble=True)
    folder = tmp_path / "tol" / "embeddings"
    folder.mkdir(parents=True)
    np.save(folder / "txt_emb_species.npy", emb.T.astype(np.float32))
    entries = [[[*n[:6], n[6].split()[1]], ""] for n in names]
    (folder / "txt_emb_species.json").write_text(json.dumps(entries))
    run("curate", str(collection), "--reference-labels", str(tmp_path / "tol"))
    state = CurationStore(Collection.open(collection)).load()
    assert state.manifest["reference_path"] is not None and state.manifest["reference"]["labels"] == 25
    ids = state.ids
    truth = curated_bed.true_species
    hits = [
        int(state.arrays["ref_idx"][i, 0]) == int(truth[i]) for i in range(len(truth)) if truth[i] >= 0 and i < len(ids)
    ]
    assert sum(hits) / len(hits) >= 0.7
    assert state.manifest["reference"]["names"]


def test_a_real_build_of_pictures(tmp_path, tiny_model_source):
    """Pictures built with the tiny model, an exact copy among them: every list is computed; the copy
    is an exact duplicate group; the app's queue logic serves it."""
    from imagegen import make_folder

    from indexer.build import BuildOptions, build, open_source
    from indexer.curate import Curation, ListOptions, curate
    from search_ui.curation import ReviewQueue

    folder = make_folder(tmp_path / "pics", 16)
    copy = tmp_path / "pics" / "b" / "copy_of_0000.png"
    shutil.copy(tmp_path / "pics" / "a" / "img_0000.png", copy)
    build(
        tmp_path / "c",
        [open_source(str(folder), labels=str(folder / "labels.csv"))],
        model_name=tiny_model_source,
        options=BuildOptions(workers=0),
    )
    report = curate(tmp_path / "c")
    assert report.images == 17 and report.labels >= 4
    cur = Curation.open(tmp_path / "c")
    # random weights put every picture near every other: at the default threshold they are one
    # near-duplicate group, the byte-identical copy named within it; at cosine 1 only the copy
    groups = cur.entries("duplicates")
    copies = [ids for g in groups for ids in g.detail["exact_copies"]]
    assert len(copies) == 1 and len(copies[0]) == 2
    only = cur.entries("duplicates", ListOptions(duplicate_cosine=1.0))
    assert len(only) == 1 and only[0].detail["exact"] and only[0].members == copies[0]
    for kind in ("misidentified", "unidentified", "outliers"):
        assert isinstance(cur.entries(kind), list)
    queue = ReviewQueue(cur.engine)
    exact_only = ListOptions(duplicate_cosine=1.0)
    review = queue.next("duplicates", exact_only)
    assert review is not None and len(review.specimen) == 2
    queue.decide("duplicates", review.entry.id, "rejected", options=exact_only)
    assert queue.entries("duplicates", exact_only) == []
