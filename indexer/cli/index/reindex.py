"""``bioclip-index reindex``: rebuild the ANN index from the stored vectors, tuned per query kind."""

from __future__ import annotations

import click

from indexer.cli.common import CONTEXT, device_option, friendly, kind_lines, parse_size, setup_logging, verbosity

__all__ = ["command"]


@click.command(
    "reindex",
    context_settings=CONTEXT,
    epilog=(
        "Examples:\n\n\b\n  bioclip-index reindex ./photos.collection\n"
        "  bioclip-index reindex ./photos.collection --tune-queries our-searches.txt\n"
        "  bioclip-index reindex ./photos.collection --tune-queries vectors.npy --tune-kind image\n\n"
        "Search parameters are tuned per query kind (image, text, mixed) to the recall target against "
        "exact search. Text queries are the collection's own taxa and a fixed vocabulary of phrases, "
        "embedded once with the collection's model and cached in it; a query log kept with "
        "bioclip-search --log-queries is used once it holds 100 queries of a kind; --tune-queries "
        "replaces both for its kind."
    ),
)
@click.argument("collection", type=click.Path())
@click.option("--index-type", default=None, help="FAISS index factory string (default: chosen from size and budget).")
@click.option("--memory-budget", default=None, help="e.g. 600MB, 8GB.")
@click.option("--recall-target", type=click.FloatRange(0.5, 1.0), default=0.95, show_default=True)
@click.option(
    "--tune-queries",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Tune on these queries: a .npy of query vectors (m, d), or a text file, one query per line.",
)
@click.option(
    "--tune-kind",
    type=click.Choice(["text", "image", "mixed"]),
    default="text",
    show_default=True,
    help="The kind of query in --tune-queries.",
)
@click.option("--no-query-log", is_flag=True, help="Do not tune on the collection's query log.")
@device_option
@verbosity
@friendly
def command(
    *,
    collection,
    index_type,
    memory_budget,
    recall_target,
    tune_queries,
    tune_kind,
    no_query_log,
    device,
    verbose,
    quiet,
):
    """Rebuild the ANN index from the stored vectors (no image is encoded again)."""
    setup_logging(verbose, quiet)
    from indexer.ann import TuningInputs, kind_summary, update_index
    from indexer.store import Collection
    from indexer.store.model import load_collection_model

    col = Collection.open(collection)
    tuning = TuningInputs(
        load_model=lambda: load_collection_model(col, device=device),
        queries_file=tune_queries,
        file_kind=tune_kind,
        use_log=not no_query_log,
    )
    with col.writer() as w:
        entry = update_index(
            w,
            factory=index_type,
            memory_budget=parse_size(memory_budget),
            recall_target=recall_target,
            force=True,
            tuning=tuning,
        )
    if entry is None:
        click.echo("the collection is empty; no index built")
        return
    info = entry.get("info") or {}
    instead = (info.get("tuning") or {}).get("instead_of")
    click.echo(f"built {entry['factory']} over {info.get('n', '?')} vectors in {entry['seconds']}s")
    if instead:
        click.echo(
            f"  (instead of {instead['factory']}, which missed the recall target for {', '.join(instead['missed'])})"
        )
    click.echo(f"recall@10 per query kind (target {recall_target:.2f}, against exact search):")
    click.echo("\n".join(kind_lines(kind_summary(info))))
