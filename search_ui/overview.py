"""What the collection page shows, from the engine's overview: model and revision, counts, index
and measured recall per query kind (each with the queries it was measured on), failures by reason, images and taxa per rank, sources."""

from __future__ import annotations

from typing import Any

from indexer.ann.info import kind_rows

__all__ = ["collection_overview"]


def collection_overview(engine) -> dict[str, Any]:
    """What the collection page shows, from ``engine.info()``: model and revision, counts, index
    type and measured recall, failures by reason, images and taxa per rank, sources."""
    info = engine.info()
    model = info.get("model_info") or {}
    index_info = info.get("index_info") or {}
    recall = (info.get("recall") or {}).get("image")  # the image figure; "kinds" has every kind
    pre = info.get("preprocess") or {}
    return {
        "path": info.get("path"),
        "model": info.get("model"),
        "model_source": model.get("source"),
        "revision": model.get("revision") or "not pinned (local or unversioned model)",
        "architecture": model.get("architecture"),
        "dimension": info.get("dimension"),
        "preprocess": ", ".join(f"{k} {v}" for k, v in pre.items() if k in ("mode", "size", "interpolation")),
        "images": info.get("images", 0),
        "failures": info.get("failures", 0),
        "retired": info.get("retired", 0),
        "unindexed": info.get("unindexed_images", 0),
        "generation": info.get("generation"),
        "created": info.get("created"),
        "updated": info.get("updated"),
        "index": info.get("index") or "none",
        "recall": recall,
        "recall_target": index_info.get("recall_target")
        if isinstance(index_info.get("recall_target"), (int, float))
        else None,
        "index_params": ", ".join(f"{k} {v}" for k, v in (index_info.get("params") or {}).items()),
        "kinds": kind_rows(info.get("recall_detail") or {}),
        "index_info": index_info,
        "failures_by_reason": sorted((info.get("failures_by_reason") or {}).items(), key=lambda kv: -kv[1]),
        "ranks": [(r, v.get("images", 0), v.get("taxa", 0)) for r, v in (info.get("ranks") or {}).items()],
        "sources": sorted((info.get("sources") or {}).items(), key=lambda kv: -kv[1]),
        "last_build": info.get("last_build"),
    }
