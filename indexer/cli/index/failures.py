"""``bioclip-index failures``: the images that could not be indexed, as CSV."""

from __future__ import annotations

import csv
import sys

import click

from indexer.cli.common import CONTEXT, friendly, setup_logging, verbosity

__all__ = ["command"]


@click.command(
    "failures",
    context_settings=CONTEXT,
    epilog="Example:\n\n\b\n  bioclip-index failures ./photos.collection > failures.csv",
)
@click.argument("collection", type=click.Path())
@verbosity
@friendly
def command(*, collection, verbose, quiet):
    """List the images that could not be indexed, as CSV (source, location, stage, reason, detail)."""
    setup_logging(verbose, quiet)
    from indexer.search.engine import SearchEngine

    rows = SearchEngine.open(collection, refresh_interval=None).failures()
    w = csv.writer(sys.stdout)
    w.writerow(["key", "source", "location", "stage", "reason", "detail", "failed_at"])
    for r in rows:
        w.writerow([r["key"], r["source"], r["location"], r["stage"], r["reason"], r["detail"], r["failed_at"]])
