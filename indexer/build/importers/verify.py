"""Do the stored vectors come from the recorded model and preprocessing? Re-encode a sample and see.

:func:`verify_collection` draws a seeded sample of the collection's images whose bytes can be read
(their ``location``, or another column with ``column``; ``media_roots`` maps published URLs onto a
local folder, other URLs are downloaded into the collection's media cache), encodes each with the
collection's model and recorded preprocessing, and compares with the stored vector (cosine). It
encodes them with the other preprocessing mode too (squash <-> crop), since that is the usual
difference between a release and what was declared.

The verdict (:data:`THRESHOLDS`), on the median cosine and the share of images below ``OUTLIER``:

- ``match``: median >= 0.99 and at most 5% of the sample below 0.98. The same weights and preprocessing
  give cosines above 0.999 (float16 storage, bf16 vs fp32 and JPEG decoder differences stay above
  0.99); an image below 0.98 is another picture than the one the vector was made from.
- ``misaligned``: median >= 0.99 but more than 5% below 0.98: ids that point at the wrong images.
- ``other-preprocessing``: not a match, but the other mode is: re-import with ``--preprocess``.
- ``close``: median >= 0.9: the same model, but other preprocessing details, image versions (a
  resized or re-compressed copy) or precision.
- ``mismatch``: median < 0.9: other weights or another model, or ids that do not match the images.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.errors import FetchError, ItemError
from indexer.locations import is_remote
from indexer.store import Collection
from indexer.store.schema import ALL_COLUMNS, quote_ident

__all__ = ["VerifyReport", "verify_collection", "THRESHOLDS", "OUTLIER"]

log = logging.getLogger(__name__)

#: median cosine for "match" and for "close"
THRESHOLDS = {"match": 0.99, "close": 0.9}
#: a compared image below this cosine is an outlier; more than ``MAX_OUTLIERS`` of them is no match
OUTLIER = 0.98
MAX_OUTLIERS = 0.05


@dataclass
class VerifyReport:
    """``cosines`` of the compared images (recorded preprocessing) and ``other_cosines`` (the other
    mode); ``unreachable`` counts images whose bytes could not be had, by reason; ``worst`` lists the
    lowest (cosine, key, location)."""

    collection: str
    model: str
    preprocess: str
    other_preprocess: str
    sampled: int = 0
    compared: int = 0
    cosines: list[float] = field(default_factory=list)
    other_cosines: list[float] = field(default_factory=list)
    unreachable: dict[str, int] = field(default_factory=dict)
    worst: list[tuple[float, str, str]] = field(default_factory=list)
    verdict: str = "unknown"
    advice: str = ""

    def summary(self, values: list[float] | None = None) -> dict[str, float]:
        v = np.asarray(self.cosines if values is None else values, dtype=np.float64)
        if not v.size:
            return {}
        q = np.percentile(v, [0, 5, 25, 50, 75, 95, 100])
        keys = ("min", "p5", "p25", "median", "p75", "p95", "max")
        return {**{k: round(float(x), 5) for k, x in zip(keys, q)}, "mean": round(float(v.mean()), 5)}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cosine"] = self.summary()
        d["other_cosine"] = self.summary(self.other_cosines)
        d["thresholds"] = {**THRESHOLDS, "outlier": OUTLIER, "max_outlier_share": MAX_OUTLIERS}
        return d


def _judge(report: VerifyReport) -> None:
    if not report.cosines:
        report.verdict, report.advice = "unknown", "no image of the sample could be read: nothing to compare"
        return
    cos, other = np.asarray(report.cosines), np.asarray(report.other_cosines)
    median, outliers = float(np.median(cos)), float((cos < OUTLIER).mean())
    if median >= THRESHOLDS["match"] and outliers <= MAX_OUTLIERS:
        report.verdict = "match"
        report.advice = f"the stored vectors are {report.model}'s with {report.preprocess} preprocessing"
        if outliers:
            report.advice += f"; {int((cos < OUTLIER).sum())} images disagree (see the worst: wrong image for the id?)"
    elif median >= THRESHOLDS["match"]:
        report.verdict = "misaligned"
        report.advice = (
            f"most vectors match, but {int((cos < OUTLIER).sum())} of {cos.size} images do not "
            "(below the outlier threshold): ids pointing at the wrong images? see the lowest"
        )
    elif other.size and float(np.median(other)) >= THRESHOLDS["match"]:
        report.verdict = "other-preprocessing"
        report.advice = (
            f"the vectors were made with {report.other_preprocess} preprocessing, not {report.preprocess}: import "
            f"them again into a new collection with --preprocess {report.other_preprocess}, so image queries match"
        )
    elif median >= THRESHOLDS["close"]:
        report.verdict = "close"
        report.advice = (
            "the same model, it seems, but not the same preprocessing, image files or precision: image queries "
            "will rank these images slightly differently"
        )
    else:
        report.verdict = "mismatch"
        report.advice = (
            f"the stored vectors are not {report.model}'s for these images: another model or weights, or ids "
            "that do not match the images (check --model and the id column)"
        )


def _sample(collection: Collection, n: int, seed: int, column: str | None) -> list[tuple[int, str, str | None]]:
    snap = collection.snapshot()
    con = snap.connect(materialize=False)
    if column is None:
        expr = "location"
    elif column in ALL_COLUMNS:
        expr = quote_ident(column)
    else:
        expr = "json_extract_string(extra, '$.\"' || ? || '\"')"
    params = [column] if column is not None and column not in ALL_COLUMNS else []
    rows = con.execute(
        f"SELECT id, key, {expr} AS loc FROM images ORDER BY hash(id + ?) LIMIT ?", [*params, seed, n]
    ).fetchall()
    con.close()
    return [(int(i), str(k), loc) for i, k, loc in rows]


def _map_roots(location: str, roots: Mapping[str, str]) -> str:
    from indexer.build.sources.media_root import map_location

    for prefix in sorted(roots, key=len, reverse=True):
        if location.startswith(prefix):
            path, why = map_location(location, prefix, os.path.abspath(roots[prefix]))
            if path is None:
                raise FetchError("invalid-url", why or location)
            return path
    return location


def verify_collection(
    path: str | os.PathLike,
    *,
    sample: int = 100,
    seed: int = 0,
    media_roots: Mapping[str, str] | None = None,
    column: str | None = None,
    model: Any = None,
    device: str = "auto",
    batch_size: int = 16,
) -> VerifyReport:
    """Re-encode a sample of the collection's images and compare with the stored vectors (see the
    module docstring). ``model`` (already loaded) must be the collection's; by default it is loaded."""
    from bioclip.preprocess import PreprocessConfig, make_transform
    from indexer.media.decode import decode_image
    from indexer.media.read import read_location
    from indexer.store.model import check_loaded_model, load_collection_model

    collection = Collection.open(path)
    if model is None:
        model = load_collection_model(collection, device=device)
    else:
        check_loaded_model(collection, model)
    cfg = model.preprocess_config
    other_mode = "crop" if cfg.mode == "squash" else "squash"
    other = make_transform(
        PreprocessConfig(cfg.size, other_mode, cfg.mean, cfg.std, "bicubic" if other_mode == "crop" else "bilinear")
    )
    report = VerifyReport(str(collection.path), str(collection.model.get("name")), cfg.mode, other_mode)
    rows = _sample(collection, sample, seed, column)
    report.sampled = len(rows)
    downloader = None
    ok: list[tuple[int, str, str]] = []
    mine, theirs = [], []
    try:
        for image_id, key, loc in rows:
            try:
                if not loc:
                    raise FetchError("no-location", f"{key}: no location recorded")
                loc = _map_roots(loc, media_roots or {})
                if is_remote(loc) and downloader is None:
                    from indexer.build.download import DownloadConfig, Downloader

                    downloader = Downloader(DownloadConfig(cache_dir=collection.path / "cache" / "media"))
                data = read_location(loc, max_bytes=512 << 20, downloader=downloader)
                image = decode_image(data, name=loc, min_size=cfg.draft_size).image
            except ItemError as exc:
                report.unreachable[exc.reason] = report.unreachable.get(exc.reason, 0) + 1
                continue
            ok.append((image_id, key, loc))
            mine.append(model.transform(image))
            theirs.append(other(image))
    finally:
        if downloader is not None:
            downloader.close()
    if ok:
        import torch

        ids = np.array([i for i, _, _ in ok], dtype=np.int64)
        stored = collection.snapshot().get_vectors(ids)
        stored /= np.linalg.norm(stored, axis=1, keepdims=True)

        def encode(tensors: list) -> np.ndarray:
            steps = range(0, len(tensors), batch_size)
            return np.concatenate([model.encode_image_tensors(torch.stack(tensors[s : s + batch_size])) for s in steps])

        fresh, alt = encode(mine), encode(theirs)
        cos = np.einsum("ij,ij->i", stored, fresh)
        report.cosines = [round(float(c), 6) for c in cos]
        report.other_cosines = [round(float(c), 6) for c in np.einsum("ij,ij->i", stored, alt)]
        report.compared = len(ok)
        order = np.argsort(cos)[:5]
        report.worst = [(round(float(cos[j]), 5), ok[j][1], ok[j][2]) for j in order]
    _judge(report)
    log.info("verify %s: %s (%d of %d compared)", collection.path, report.verdict, report.compared, report.sampled)
    return report
