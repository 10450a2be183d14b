"""``bioclip-index evaluate``: how far to trust the curation on this collection (accuracy, calibration)."""

from __future__ import annotations

import json

import click

from indexer.cli.common import CONTEXT, device_option, friendly, setup_logging, verbosity

__all__ = ["command"]


@click.command(
    "evaluate",
    context_settings=CONTEXT,
    epilog=(
        "Examples:\n\n\b\n"
        "  bioclip-index evaluate ./museum.collection\n"
        "  bioclip-index evaluate ./museum.collection --rank family --format json\n\n"
        "Measured on the collection's own labelled images: zero-shot (over the collection's taxa) and the\n"
        "neighbour vote (leave-one-out), top-1 and top-5 per rank, and a calibration table."
    ),
)
@click.argument("collection", type=click.Path(file_okay=False, exists=True))
@click.option("--rank", default=None, help="The rank of the calibration table (default: the deepest named).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--no-update", is_flag=True, help="Use the stored curation data as it is.")
@device_option
@verbosity
@friendly
def command(*, collection, rank, fmt, no_update, device, verbose, quiet):
    """Accuracy per rank of the zero-shot predictions and of the neighbour vote on the labelled
    images of COLLECTION, and how well their confidence is calibrated."""
    setup_logging(verbose, quiet)
    from indexer.curate import Curation, curate, evaluate
    from indexer.curate.compute import open_engine

    engine = open_engine(collection)
    engine._device = device
    if not no_update:
        curate(engine)
    result = evaluate(Curation.open(engine), rank=rank)
    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    from indexer.cli.provenance import format_rows

    click.echo(f"{result.images:,} images, model {result.model}; leave-one-out, near-duplicates do not vote\n")
    cols = ["rank", "labelled", "zeroshot_top1", "zeroshot_top5", "neighbours_top1", "neighbours_top5"]
    click.echo(format_rows(result.ranks, cols, "table"))
    for method, bins in result.calibration.items():
        click.echo(f"calibration at {result.calibration_rank}, {method} (ECE {result.ece[method]:.3f})")
        rows = [{**b, "bin": f"{b['low']:.1f}-{b['high']:.1f}"} for b in bins if b["images"]]
        click.echo(format_rows(rows, ["bin", "images", "confidence", "accuracy"], "table"))
