"""Curation on a collection with planted errors (see tests/curatebed.py for how it is built):
precision and recall of each list against the planted truth, incremental updates, decisions,
exports and the evaluation."""

from __future__ import annotations

import csv
import io
import shutil

import numpy as np
import pytest
from curatebed import species_lineages, write_parquet

from indexer.curate import CurateOptions, Curation, ListOptions, curate, evaluate
from indexer.curate.export import DWC_COLUMNS, dwc_rows, write_csv
from indexer.curate.store import CurationStore
from indexer.errors import CurationError

pytestmark = pytest.mark.slow

RANK_INDEX = {"kingdom": 0, "phylum": 1, "class": 2, "order": 3, "family": 4, "genus": 5, "species": 6}


@pytest.fixture(scope="module")
def model(curate_model):
    return curate_model


@pytest.fixture(scope="module")
def bed(curated_bed):
    return curated_bed


@pytest.fixture(scope="module")
def cur(bed, model):
    return Curation.open(bed.path, model=model)


@pytest.fixture(scope="module")
def uuid_of(cur):
    ids = cur.engine.selected_ids(None)
    return {h.id: h.get("key") or h.location for h in cur.engine.get(list(ids))}


def _true_name(bed, species: int, rank: str) -> str:
    lineage = bed.lineages[species]
    return lineage[RANK_INDEX[rank]]


def test_misidentified_finds_the_swapped_labels_and_where_they_start(bed, cur, uuid_of):
    found = cur.entries("misidentified")
    by_uuid = {uuid_of[e.id]: e for e in found}
    planted = set(bed.swapped)
    hits = planted & set(by_uuid)
    recall = len(hits) / len(planted)
    flagged = [u for u in by_uuid if not u.startswith("odd-")]  # an outlier's label is arbitrary
    precision = len(hits) / max(len(flagged), 1)
    assert recall >= 0.85, recall
    assert precision >= 0.85, precision
    right_rank = sum(by_uuid[u].start_rank == bed.swapped[u][1] for u in hits)
    assert right_rank / len(hits) >= 0.85
    # the suggested taxon is the true one at the rank it is given
    right_name = sum(by_uuid[u].suggested == _true_name(bed, bed.swapped[u][0], by_uuid[u].rank) for u in hits)
    assert right_name / len(hits) >= 0.85
    e = by_uuid[sorted(hits)[0]]
    assert 0 < e.score <= 1 and e.neighbours and e.alternatives and e.label
    assert [x.score for x in found] == sorted((x.score for x in found), reverse=True)
    # every swap type is found
    assert {bed.swapped[u][1] for u in hits} == {"species", "family", "order"}


def test_misidentified_down_to_a_rank_and_a_threshold(cur, bed, uuid_of):
    orders = cur.entries("misidentified", ListOptions(rank="order"))
    assert orders and all(e.start_rank in ("kingdom", "phylum", "class", "order") for e in orders)
    order_swaps = {u for u, (_, r) in bed.swapped.items() if r == "order"}
    assert len(order_swaps & {uuid_of[e.id] for e in orders}) >= 0.85 * len(order_swaps)
    strict = cur.entries("misidentified", ListOptions(min_confidence=0.99))
    assert len(strict) <= len(cur.entries("misidentified")) and all(e.score >= 0.99 for e in strict)
    with pytest.raises(CurationError, match="unknown rank"):
        cur.entries("misidentified", ListOptions(rank="tribe"))


def test_unidentified_get_the_deepest_confident_rank(cur, bed, uuid_of):
    todo = {**bed.unlabelled, **bed.partial}
    found = {uuid_of[e.id]: e for e in cur.entries("unidentified")}
    assert set(bed.unlabelled) <= set(found)  # without a label, at least the class is certain
    assert not set(found) - set(todo), "only images without a species label are suggested"
    correct = [found[u].suggested == _true_name(bed, s, found[u].rank) for u, s in todo.items() if u in found]
    assert sum(correct) / len(correct) >= 0.9
    # a label down to family is only ever made deeper
    for u in set(bed.partial) & set(found):
        assert RANK_INDEX[found[u].rank] > RANK_INDEX["family"] and found[u].label
    # a lower threshold suggests for more images and reaches deeper ranks, still mostly right
    lower = {uuid_of[e.id]: e for e in cur.entries("unidentified", ListOptions(min_confidence=0.6))}
    assert len(set(todo) & set(lower)) >= 0.85 * len(todo)
    deeper = sum(RANK_INDEX[lower[u].rank] > RANK_INDEX[found[u].rank] for u in found if u in lower)
    assert deeper >= 0.3 * len(found)
    right = [lower[u].suggested == _true_name(bed, s, lower[u].rank) for u, s in todo.items() if u in lower]
    assert sum(right) / len(right) >= 0.8
    capped = cur.entries("unidentified", ListOptions(rank="order", min_confidence=0.6))
    assert capped and all(e.rank in ("kingdom", "phylum", "class", "order") for e in capped)
    e = next(iter(found.values()))
    assert e.alternatives and e.alternatives[0][1] >= e.alternatives[-1][1]


def test_duplicate_groups_at_the_threshold(cur, bed, uuid_of):
    groups = [{uuid_of[i] for i in e.members} for e in cur.entries("duplicates")]
    above = [set(p) for c, p in bed.dup_pairs.items() if c >= 0.97]
    below = [set(p) for c, p in bed.dup_pairs.items() if c < 0.97]
    assert all(p in groups for p in above), (groups, above)
    assert not any(p <= g for p in below for g in groups)
    assert len(groups) == len(above)  # no other group: images of one species sit near 0.87
    looser = [{uuid_of[i] for i in e.members} for e in cur.entries("duplicates", ListOptions(duplicate_cosine=0.94))]
    assert set(bed.dup_pairs[0.95]) in looser and set(bed.dup_pairs[0.93]) not in looser


def test_outliers_are_the_blank_images(cur, bed, uuid_of):
    found = [uuid_of[e.id] for e in cur.entries("outliers")]
    assert set(bed.outliers) <= set(found)
    assert len(set(found) - set(bed.outliers)) <= 0.2 * len(found)
    e = cur.entries("outliers")[0]
    assert e.detail["nearest_cosine"] < 0.6 and e.score >= 3


def test_filters_restrict_the_lists_as_in_search(cur):
    nhm = cur.entries("misidentified", ListOptions(filters=("institutionCode=NHM",)))
    every = cur.entries("misidentified")
    assert 0 < len(nhm) < len(every)
    inst = {h.id: h.get("institutionCode") for h in cur.engine.get([e.id for e in nhm])}
    assert set(inst.values()) == {"NHM"}
    coleo = cur.entries("unidentified", ListOptions(filters=("taxon=Coleoptera",)))
    assert all(e.suggested for e in coleo)


def test_evaluate_reports_accuracy_and_calibration(cur):
    ev = evaluate(cur)
    by_rank = {r["rank"]: r for r in ev.ranks}
    assert set(by_rank) == set(RANK_INDEX)
    sp = by_rank["species"]
    assert sp["zeroshot_top1"] >= 0.7 and sp["neighbours_top1"] >= 0.85
    assert sp["zeroshot_top5"] >= sp["zeroshot_top1"] and sp["neighbours_top5"] >= sp["neighbours_top1"]
    assert by_rank["order"]["zeroshot_top1"] >= sp["zeroshot_top1"]
    bins = ev.calibration["zeroshot"]
    assert len(bins) == 10 and sum(b["images"] for b in bins) == sp["labelled"]
    assert 0 <= ev.ece["zeroshot"] <= 1 and "neighbours" in ev.calibration


def test_decisions_leave_the_queue_survive_a_rebuild_and_are_exported(bed, model, tmp_path):
    path = tmp_path / "c"
    shutil.copytree(bed.path, path)
    cur = Curation.open(path, model=model)
    first, second = cur.entries("misidentified")[:2]
    cur.decide(first, "accepted", by="A. Curator")
    cur.decide(second, "rejected", by="A. Curator")
    after = cur.entries("misidentified")
    assert first.id not in {e.id for e in after} and second.id not in {e.id for e in after}
    both = cur.entries("misidentified", ListOptions(include_decided=True))
    assert {first.id, second.id} <= {e.id for e in both}
    # a full recomputation keeps the decisions (they are not derived data)
    curate(path, model=model, options=CurateOptions(full=True))
    cur = Curation.open(path, model=model)
    assert first.id not in {e.id for e in cur.entries("misidentified")}
    rows = dwc_rows(cur.engine, both, cur.model_label(), cur.decisions.latest(), today="2026-01-02")
    by_cat = {r["catalogNumber"]: r for r in rows}
    meta = {h.id: h for h in cur.engine.get([first.id, second.id])}
    accepted = by_cat[meta[first.id].get("catalogNumber")]
    assert accepted["identificationVerificationStatus"] == "verified"
    assert accepted["identifiedBy"].startswith("A. Curator") and "local-dir:" in accepted["identifiedBy"]
    assert meta[second.id].get("catalogNumber") not in by_cat  # rejected: not an identification
    pending = [r for r in rows if r["identificationVerificationStatus"] == "unverified"]
    assert pending and all(
        r["dateIdentified"] == "2026-01-02" and "score" in r["identificationRemarks"] for r in pending
    )
    text = write_csv(rows, DWC_COLUMNS)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert list(parsed[0]) == list(DWC_COLUMNS) and parsed[0]["occurrenceID"].startswith("urn:occ:")


def test_new_pixels_undo_a_decision(bed, model, tmp_path):
    """An image re-imported with another vector (new pixels) is curated again."""
    from indexer.build.importers import DeclaredModel, import_embeddings

    path = tmp_path / "c"
    shutil.copytree(bed.path, path)
    shutil.copytree(bed.path.parent / "emb", tmp_path / "emb")
    cur = Curation.open(path, model=model)
    entry = cur.entries("outliers")[0]
    cur.decide(entry, "rejected")
    assert entry.id not in {e.id for e in Curation.open(path, model=model).entries("outliers")}
    uid = {h.id: h.get("key") for h in cur.engine.get([entry.id])}[entry.id]
    i = bed.uuids.index(uid)
    vecs = bed.vectors.copy()
    vecs[i] = -vecs[i]  # other pixels, still far from everything
    lineages = species_lineages()
    labels = [list(lineages[s]) if s >= 0 else list(lineages[0]) for s in bed.true_species]
    write_parquet(tmp_path / "emb" / "part-00000.parquet", bed.uuids, vecs, labels)
    import_embeddings(path, [str(tmp_path / "emb")], model=DeclaredModel(model=model))
    report = curate(path, model=model)
    assert not report.full and report.searched >= 1
    again = Curation.open(path, model=model)
    assert any(d.id == entry.id for d in again.decisions.all())
    outliers = {e.id for e in again.entries("outliers")}
    new_id = {h.get("key"): h.id for h in again.engine.get(list(again.engine.selected_ids(None)))}[uid]
    assert new_id in outliers


def test_incremental_curation_matches_a_full_run(bed, model, tmp_path):
    from indexer.build.importers import DeclaredModel, import_embeddings

    path = tmp_path / "c"
    shutil.copytree(bed.path, path)
    rng = np.random.default_rng(5)
    picks = rng.choice(np.flatnonzero(bed.true_species >= 0), 40, replace=False)
    noise = rng.standard_normal((40, bed.vectors.shape[1])).astype(np.float32) * 0.05
    new = bed.vectors[picks] + noise
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    lineages = species_lineages()
    uuids = [f"new-{j}" for j in range(40)]
    write_parquet(
        tmp_path / "more" / "part-00000.parquet", uuids, new, [list(lineages[bed.true_species[p]]) for p in picks]
    )
    import_embeddings(path, [str(tmp_path / "more")], model=DeclaredModel(model=model))
    report = curate(path, model=model)
    assert (
        not report.full and report.searched == 40 and report.lists_updated > 0 and report.images == len(bed.uuids) + 40
    )
    inc = CurationStore(Curation.open(path, model=model).engine.collection).load()
    shutil.copytree(path, tmp_path / "full")
    curate(tmp_path / "full", model=model, options=CurateOptions(full=True))
    full = CurationStore(Curation.open(tmp_path / "full", model=model).engine.collection).load()
    assert np.array_equal(inc.ids, full.ids)
    same = np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(inc.arrays["nbr_ids"], full.arrays["nbr_ids"])])
    assert same >= 0.97, same
    assert np.allclose(inc.arrays["zs_p"], full.arrays["zs_p"], atol=1e-5)
    # nothing new: nothing computed
    again = curate(path, model=model)
    assert again.up_to_date and again.searched == 0


def test_curation_needs_computing_first(tmp_path, model, bed):
    path = tmp_path / "c"
    shutil.copytree(bed.path, path)
    shutil.rmtree(path / "curation")
    with pytest.raises(CurationError, match="run `bioclip-index curate"):
        Curation.open(path, model=model)
