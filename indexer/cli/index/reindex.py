"""``bioclip-index reindex``: rebuild the ANN index from the stored vectors."""

from __future__ import annotations

import click

from indexer.cli.common import CONTEXT, friendly, parse_size, setup_logging, verbosity

__all__ = ["command"]


@click.command(
    "reindex",
    context_settings=CONTEXT,
    epilog="Example:\n\n\b\n  bioclip-index reindex ./photos.collection --index-type HNSW32",
)
@click.argument("collection", type=click.Path())
@click.option("--index-type", default=None, help="FAISS index factory string (default: chosen from size and budget).")
@click.option("--memory-budget", default=None, help="e.g. 600MB, 8GB.")
@click.option("--recall-target", type=click.FloatRange(0.5, 1.0), default=0.95, show_default=True)
@verbosity
@friendly
def command(*, collection, index_type, memory_budget, recall_target, verbose, quiet):
    """Rebuild the ANN index from the stored vectors (nothing is encoded again)."""
    setup_logging(verbose, quiet)
    from indexer.ann import update_index
    from indexer.store import Collection

    col = Collection.open(collection)
    with col.writer() as w:
        entry = update_index(
            w, factory=index_type, memory_budget=parse_size(memory_budget), recall_target=recall_target, force=True
        )
    if entry is None:
        click.echo("the collection is empty; no index built")
        return
    info = entry.get("info") or {}
    rec = info.get("measured_recall")
    click.echo(
        f"built {entry['factory']} over {info.get('n', '?')} vectors in {entry['seconds']}s"
        + (f", recall@10 {rec:.3f}" if isinstance(rec, (int, float)) else "")
    )
