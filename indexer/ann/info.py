"""What an index is and how well it searches, per query kind: the JSON sidecar saved beside every index file."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from indexer.errors import AnnError

__all__ = [
    "IndexInfo",
    "FORMAT_VERSION",
    "QUERY_KINDS",
    "check_kind",
    "kind_summary",
    "kind_rows",
    "applied_recall",
]

#: Version of the sidecar format this code writes. 2: search parameters and recall per query kind
#: (``kinds``); version 1 sidecars (one figure, measured on image queries) are still read.
FORMAT_VERSION = 2

#: The kinds of query an index is tuned for: ``image`` (a picture, an indexed image, a vector),
#: ``text`` (words or a taxon name) and ``mixed`` (a weighted combination of both).
QUERY_KINDS: tuple[str, ...] = ("image", "text", "mixed")

#: What version 1 sidecars measured their single figure on.
_V1_QUERIES = "sampled stored vectors, own id excluded (image queries; measured before query kinds)"


def check_kind(kind: str) -> str:
    if kind not in QUERY_KINDS:
        raise AnnError(f"unknown query kind {kind!r}; expected one of {', '.join(QUERY_KINDS)}")
    return kind


@dataclass
class IndexInfo:
    """What an index is and how well it searches; saved as the JSON sidecar ``PATH.json``.

    ``kinds`` maps each tuned query kind to what tuning found for it (see
    :class:`indexer.ann.tuning.KindTuning`): ``params`` (the search parameters: ``nprobe``,
    ``efSearch``, ``k_factor``, ``rerank``, ``filter_budget``, whichever apply), ``recall``
    (recall@10 against exact search), ``queries`` (what it was measured on, in words), ``met``
    and ``note`` (whether the target was reached within the latency budget, and if not why).
    ``params`` and ``measured_recall`` are the image kind's, kept for readers of version 1.
    A kind that is missing was not measured: it is searched with the image parameters.
    ``memory_bytes`` is an estimate of the resident size when loaded into RAM; ``tuning`` says how
    tuning ran; ``file_bytes`` is the size of the saved index file.
    ``build`` says how it was built when that was more than train-and-add in one process (a sharded
    build: ``storage`` ``"ondisk"``, shards, training, seconds per phase, the codes' reconstruction
    error ``pq_error`` that drift is measured against).
    """

    factory: str
    n: int
    dimension: int
    params: dict[str, int] = field(default_factory=dict)
    recall_target: float | None = None
    measured_recall: float | None = None
    bytes_per_vector: float = 0.0
    memory_bytes: int = 0
    build_seconds: float = 0.0
    tuning: dict[str, Any] = field(default_factory=dict)
    kinds: dict[str, dict[str, Any]] = field(default_factory=dict)
    file_bytes: int | None = None
    build: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def params_for(self, kind: str) -> dict[str, int]:
        """The tuned search parameters for queries of ``kind`` (the image ones when it was not measured)."""
        entry = self.kinds.get(check_kind(kind))
        return dict(entry["params"]) if entry else dict(self.params)

    def recall_for(self, kind: str) -> float | None:
        """Measured recall@10 for ``kind``; None when that kind was not measured."""
        entry = self.kinds.get(check_kind(kind))
        return None if not entry else entry.get("recall")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> IndexInfo:
        """Parse a sidecar; unknown keys, missing keys and newer format versions are errors.
        A version 1 sidecar becomes one with its single figure as the image kind's."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AnnError(f"index sidecar is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise AnnError("index sidecar must hold a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise AnnError(f"index sidecar has unknown keys: {sorted(unknown)}")
        version = raw.get("format_version", 0)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise AnnError(f"index format version {version!r} is newer than supported ({FORMAT_VERSION})")
        try:
            info = cls(**raw)
        except TypeError as exc:
            raise AnnError(f"index sidecar is incomplete: {exc}") from exc
        info.params = {str(k): int(v) for k, v in info.params.items()}
        if not info.kinds and version < 2:
            info.kinds = _v1_kinds(info.params, info.measured_recall, info.tuning)
        bad = set(info.kinds) - set(QUERY_KINDS)
        if bad:
            raise AnnError(f"index sidecar has unknown query kinds: {sorted(bad)}")
        for entry in info.kinds.values():
            entry["params"] = {str(k): int(v) for k, v in (entry.get("params") or {}).items()}
        return info


def _v1_kinds(params: dict[str, int], recall: float | None, tuning: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A version 1 index's single figure, as the image kind's (it was measured on stored vectors)."""
    if recall is None:
        return {}
    queries = tuning.get("queries")
    return {
        "image": {
            "params": dict(params),
            "recall": recall,
            "queries": f"{queries} {_V1_QUERIES}" if queries else _V1_QUERIES,
            "met": None,
            "note": "measured before query kinds; reindex to measure text and mixed queries",
        }
    }


def kind_summary(info: Mapping[str, Any] | None) -> dict[str, dict[str, Any] | None]:
    """Kind -> what tuning found (params, recall, queries, met, note), or None when not measured,
    from an index's info as stored in a generation (either sidecar version)."""
    if not info:
        return dict.fromkeys(QUERY_KINDS)
    kinds = info.get("kinds") or _v1_kinds(
        {str(k): int(v) for k, v in (info.get("params") or {}).items()},
        info.get("measured_recall"),
        info.get("tuning") or {},
    )
    return {kind: (dict(kinds[kind]) if kind in kinds else None) for kind in QUERY_KINDS}


def kind_rows(summary: Mapping[str, Mapping[str, Any] | None]) -> list[dict[str, str]]:
    """What every reader shows of :func:`kind_summary` (``bioclip-index info`` and ``reindex``, the
    app's collection page): per kind, its recall, search parameters, the queries the figure was
    measured on, and a note (why the target was missed; why a kind was not measured)."""
    rows = []
    for kind in QUERY_KINDS:
        entry = summary.get(kind)
        if not entry:
            rows.append(
                {
                    "kind": kind,
                    "recall": "not measured",
                    "params": "the image parameters",
                    "queries": "none",
                    "note": "not measured: reindex to tune this kind",
                }
            )
            continue
        recall = entry.get("recall")
        params = entry.get("params") or {}
        rows.append(
            {
                "kind": kind,
                "recall": f"{recall:.3f}" if isinstance(recall, int | float) else "not measured",
                "params": ", ".join(f"{k} {v}" for k, v in params.items()) or "none (exact search)",
                "queries": str(entry.get("queries") or "not recorded"),
                "note": ("target missed: " if entry.get("met") is False else "") + str(entry.get("note") or ""),
            }
        )
    return rows


def applied_recall(info: IndexInfo | None, kind: str, params: Mapping[str, int] | None = None) -> dict[str, Any]:
    """What applied to one query of ``kind``, as every answer reports it: ``kind``, ``index`` (the
    FAISS factory; null: no index, every image compared exactly), ``recall_at_10`` (as stored for
    the kind; null when the kind was not measured), ``target``, ``measured_on`` (the queries the
    figure was measured on), ``params`` (``params``: what the search ran with; else the stored
    ones), ``met`` and ``note``. ``info`` None: exact search, recall 1 by definition."""
    check_kind(kind)
    if info is None:
        return {
            "kind": kind,
            "index": None,
            "recall_at_10": 1.0,
            "target": None,
            "measured_on": "none needed (exact search)",
            "params": {},
            "met": None,
            "note": "no ANN index: every image compared exactly, recall 1 by definition",
        }
    entry = info.kinds.get(kind)
    used = dict(params) if params is not None else info.params_for(kind)
    if not entry:
        return {
            "kind": kind,
            "index": info.factory,
            "recall_at_10": None,
            "target": info.recall_target,
            "measured_on": None,
            "params": used,
            "met": None,
            "note": f"{kind} queries not measured: searched with the image parameters; reindex to tune them",
        }
    recall = entry.get("recall")
    return {
        "kind": kind,
        "index": info.factory,
        "recall_at_10": float(recall) if isinstance(recall, int | float) else None,
        "target": info.recall_target,
        "measured_on": entry.get("queries") or None,
        "params": used,
        "met": entry.get("met"),
        "note": str(entry.get("note") or ""),
    }
