"""``bioclip-index export``: a collection's vectors and key metadata as Parquet or clip-retrieval's npy layout."""

from __future__ import annotations

import json

import click

from indexer.cli.common import CONTEXT, friendly, setup_logging, verbosity

__all__ = ["command"]


@click.command(
    "export",
    context_settings=CONTEXT,
    epilog=(
        "Examples:\n\n\b\n"
        "  bioclip-index export ./tol.collection --out ./tol-export\n"
        "  bioclip-index export ./museum.collection --out ./corvids --where taxon=Corvidae --where country=Kenya\n"
        "  bioclip-index export ./museum.collection --out ./clip --format npy\n\n"
        "Read the Parquet files with DuckDB (SELECT * FROM 'DIR/*.parquet'), pandas, pyarrow or emb-explorer."
    ),
)
@click.argument("collection", type=click.Path(file_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="A new folder for the files.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "npy"]),
    default="parquet",
    show_default=True,
    help="parquet: uuid, emb (list<float32>), ranks, metadata; npy: img_emb/*.npy + metadata/*.parquet as clip-retrieval writes them.",
)
@click.option(
    "--where",
    "where",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Export only images passing these filters (as in bioclip-search).",
)
@click.option("--taxon", default=None, help="Export only this taxon (any rank) and what is below it.")
@click.option("--shard-rows", type=click.IntRange(1), default=500_000, show_default=True, help="Rows per file.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@verbosity
@friendly
def command(*, collection, out, fmt, where, taxon, shard_rows, as_json, verbose, quiet):
    """Export the vectors and key metadata of COLLECTION (all images, or those passing --where)."""
    setup_logging(verbose, quiet)
    from indexer.search.engine import SearchEngine

    filters = list(where) + ([f"taxon={taxon}"] if taxon else [])
    engine = SearchEngine.open(collection)
    report = engine.export(out, fmt=fmt, filters=filters or None, shard_rows=shard_rows)
    if as_json:
        click.echo(json.dumps(report.__dict__, indent=2))
    elif not quiet:
        click.echo(f"exported    {report.rows} images ({report.dimension}-d) to {report.out}")
        click.echo(f"files       {', '.join(report.files[:4])}{' ...' if len(report.files) > 4 else ''}")
        click.echo(f"columns     {', '.join(report.columns)}")
