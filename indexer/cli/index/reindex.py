"""``bioclip-index reindex``: rebuild the ANN index from the stored vectors, tuned per query kind."""

from __future__ import annotations

import click

from indexer.cli.common import CONTEXT, device_option, friendly, kind_lines, parse_size, setup_logging, verbosity

__all__ = ["command"]

GB = 1e9


@click.command(
    "reindex",
    context_settings=CONTEXT,
    epilog=(
        "Examples:\n\n\b\n  bioclip-index reindex ./photos.collection\n"
        "  bioclip-index reindex ./photos.collection --tune-queries our-searches.txt\n"
        "  bioclip-index reindex ./photos.collection --tune-queries vectors.npy --tune-kind image\n"
        "  bioclip-index reindex ./big.collection --ondisk --workers 8 --memory-budget 16GB\n"
        "  bioclip-index reindex ./big.collection --executor ray --ray-address auto\n"
        "  bioclip-index reindex ./big.collection --retrain\n\n"
        "Search parameters are tuned per query kind (image, text, mixed) to the recall target against "
        "exact search. Text queries are the collection's own taxa and a fixed vocabulary of phrases, "
        "embedded once with the collection's model and cached in it; a query log kept with "
        "bioclip-search --log-queries is used once it holds 100 queries of a kind; --tune-queries "
        "replaces both for its kind. From 10M images (or with --ondisk) the index is built from shards "
        "and kept on disk; it is then not trained again unless --retrain is given: its delta of recently "
        "added images is folded into the on-disk lists instead."
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
@click.option(
    "--ondisk/--in-memory",
    "ondisk",
    default=None,
    help="Build from shards and keep the index on disk, memory-mapped (default: from 10M images on).",
)
@click.option(
    "--retrain",
    is_flag=True,
    help="On-disk index: train a new one (when `info` reports drift); without it the delta is folded in.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where the shards of an on-disk build run: local processes or Ray tasks (a shared file system).",
)
@click.option("--workers", type=click.IntRange(1), default=None, help="Shards built at once (default: the cores).")
@click.option("--ray-address", default=None, help="An existing Ray cluster ('auto', 'ray://host:10001').")
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
    ondisk,
    retrain,
    executor,
    workers,
    ray_address,
    verbose,
    quiet,
):
    """Rebuild the ANN index from the stored vectors (no image is encoded again)."""
    setup_logging(verbose, quiet)
    from indexer.ann import TuningInputs, kind_summary, update_index
    from indexer.ann.sharded import ShardOptions
    from indexer.store import Collection
    from indexer.store.model import load_collection_model

    col = Collection.open(collection)
    tuning = TuningInputs(
        load_model=lambda: load_collection_model(col, device=device),
        queries_file=tune_queries,
        file_kind=tune_kind,
        use_log=not no_query_log,
    )
    budget = parse_size(memory_budget)
    shards = ShardOptions(executor=executor, workers=workers, ray_address=ray_address)
    with col.writer() as w:
        if not quiet:
            click.echo(_plan(w, index_type, budget, ondisk, shards, retrain))
        entry = update_index(
            w,
            factory=index_type,
            memory_budget=budget,
            recall_target=recall_target,
            force=True,
            tuning=tuning,
            retrain=retrain or index_type is not None,
            ondisk=ondisk,
            shards=shards,
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


def _plan(writer, factory, budget, ondisk, shards, retrain) -> str:
    """What is about to be built and its expected size, printed before a long build starts."""
    from indexer.ann.choice import choose_index, estimate
    from indexer.ann.maintenance import ONDISK_MIN_ROWS, ondisk_factory
    from indexer.ann.sharded import build_memory
    from indexer.errors import AnnError

    snap = writer.snapshot()
    n, d = snap.generation.images, snap.dimension
    entry = snap.generation.index or {}
    if n == 0:
        return "the collection is empty"
    current = (entry.get("info") or {}).get("build", {})
    if current.get("storage") == "ondisk" and not retrain and factory in (None, entry.get("factory")):
        return f"folding the delta of the on-disk {entry.get('factory')} index (no retraining)"
    if ondisk if ondisk is not None else n >= ONDISK_MIN_ROWS:
        chosen = ondisk_factory(factory, n, d, budget)
        mem = build_memory(chosen, n, d, shards)
        per, _ = estimate(chosen.split(",", 1)[1] if chosen.startswith("OPQ") else chosen, n, d)
        return (
            f"building {chosen} on disk over {n:,} vectors ({d}-d): about {per * n / GB:.2f} GB of lists, "
            f"build memory up to {mem['peak'] / GB:.2f} GB ({mem['workers']} workers x {mem['shard_rows']:,}-vector "
            f"shards, training on {mem['train_rows']:,})"
        )
    chosen = factory or choose_index(n, d, budget)
    try:
        size = estimate(chosen, n, d)[1] / GB
    except AnnError:  # a forced factory without a size formula
        return f"building {chosen} in memory over {n:,} vectors ({d}-d)"
    return f"building {chosen} in memory over {n:,} vectors ({d}-d): about {size:.2f} GB"
