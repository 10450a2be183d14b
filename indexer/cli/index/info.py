"""``bioclip-index info``: a collection's model, counts, index and failures by reason."""

from __future__ import annotations

import json

import click

from indexer.cli.common import CONTEXT, friendly, kind_lines, setup_logging, verbosity

__all__ = ["command"]


@click.command(
    "info", context_settings=CONTEXT, epilog="Example:\n\n\b\n  bioclip-index info ./photos.collection --json"
)
@click.argument("collection", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@verbosity
@friendly
def command(*, collection, as_json, verbose, quiet):
    """Show a collection's model, counts, index and failures by reason."""
    setup_logging(verbose, quiet)
    from indexer.search.engine import SearchEngine

    info = SearchEngine.open(collection, refresh_interval=None).info()
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    idx = info.get("index_info") or {}
    rows = [
        ("collection", info["path"]),
        (
            "model",
            f"{info['model']} ({info['model_info'].get('source')}"
            + (f" @ {info['model_info'].get('revision')}" if info["model_info"].get("revision") else "")
            + ")",
        ),
        ("dimension", info["dimension"]),
        ("precision", _precision(info)),
        ("preprocess", json.dumps(info.get("preprocess"))),
        ("images", info["images"]),
        ("failures", info["failures"]),
        ("retired", info["retired"]),
        (
            "index",
            f"{info['index']}"
            + (f" (recall target {idx['recall_target']:.2f})" if isinstance(idx.get("recall_target"), float) else ""),
        ),
        *_storage_rows(idx),
        ("not yet in index", info["unindexed_images"]),
        ("generation", info["generation"]),
        ("updated", info["updated"]),
    ]
    width = max(len(k) for k, _ in rows)
    out = [f"{k.ljust(width)}  {v}" for k, v in rows]
    out.append("recall@10 per query kind (against exact search):")
    out += kind_lines(info["recall_detail"])
    if info["sources"]:
        out.append("by source:")
        out += [f"  {n:8d}  {s}" for s, n in info["sources"].items()]
    if info["failures_by_reason"]:
        out.append("failures by reason:")
        out += [f"  {n:8d}  {r}" for r, n in info["failures_by_reason"].items()]
    out.append("images per rank:")
    out += [f"  {rank:8s} {v['images']:8d} images, {v['taxa']} taxa" for rank, v in info["ranks"].items()]
    click.echo("\n".join(out))


def _precision(info: dict) -> str:
    """The precision the collection was created at, and the last build's when it differs."""
    created = info["model_info"].get("precision") or "fp32"
    last = (info.get("last_build") or {}).get("precision")
    return created if not last or last == created else f"{created} when created, {last} in the last build"


def _storage_rows(idx: dict) -> list[tuple[str, str]]:
    """An on-disk index (sharded build): its lists, its delta of recent images, the drift measured."""
    from indexer.ann.delta import DRIFT_RETRAIN_RATIO

    build = idx.get("build") or {}
    if build.get("storage") != "ondisk":
        return []
    delta = (build.get("delta") or {}).get("n", 0)
    text = f"on disk, {build.get('ivfdata_bytes', 0) / 1e9:.2f} GB of lists, {build.get('shards')} shards"
    text += f"; delta {delta} images" if delta else ""
    drift = build.get("drift")
    if isinstance(drift, (int, float)):
        text += f"; drift {drift:.2f}" + (" (run reindex --retrain)" if drift > DRIFT_RETRAIN_RATIO else "")
    return [("index storage", text)]
