"""``bioclip-index import``: precomputed embeddings (Parquet, pybioclip JSON, clip-retrieval) into a collection."""

from __future__ import annotations

import json
import sys

import click

from indexer.cli.common import CONTEXT, friendly, index_options, parse_size, setup_logging, verbosity

__all__ = ["command", "format_import_report"]


@click.command(
    "import",
    context_settings=CONTEXT,
    epilog=(
        "Examples:\n\n\b\n"
        "  bioclip-index import 'bioclip-2_float16/*.parquet' --out ./tol.collection --model bioclip-2\n"
        "  bioclip-index import emb.parquet --out ./c --model bioclip --id-column catalogNumber --vector-column embedding\n"
        "  bioclip-index import embeddings.json --out ./field.collection          # pybioclip's `bioclip embed` output\n"
        "  bioclip-index import ./clip-out --out ./c --model bioclip                # clip-retrieval's img_emb/ + metadata/\n\n"
        "Run the same command again to resume an interrupted import or to add new and changed ids."
    ),
)
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Collection folder (created if missing).")
@click.option(
    "--model",
    default=None,
    help="The model that made the vectors: bioclip, bioclip-2, hf-hub:ORG/REPO[@REV], local-dir:PATH, ... "
    "(needed for a new collection unless the files name it).",
)
@click.option("--revision", default=None, help="Pin a Hugging Face revision of the model.")
@click.option(
    "--preprocess",
    type=click.Choice(["squash", "crop"]),
    default=None,
    help="Preprocessing the vectors were made with, recorded for image queries (default squash).",
)
@click.option(
    "--format",
    "kind",
    type=click.Choice(["parquet", "pybioclip", "clip-retrieval"]),
    default=None,
    help="What SOURCES hold (default: detected).",
)
@click.option(
    "--id-column", default=None, help="Column with each image's id (default: uuid, id, key, image_path, ...)."
)
@click.option(
    "--vector-column", default=None, help="Column with the embeddings (default: emb, embedding, vector, ...)."
)
@click.option("--path-column", default=None, help="Column with the image's path or URL (default: detected).")
@click.option(
    "--metadata-column",
    "metadata_columns",
    multiple=True,
    help="Keep only these metadata columns (repeatable; default: every other column).",
)
@click.option(
    "--commit-every", type=click.IntRange(1), default=131_072, show_default=True, help="Commit after this many rows..."
)
@click.option("--commit-seconds", type=float, default=60.0, show_default=True, help="...or this many seconds.")
@click.option("--recheck", is_flag=True, help="Read files recorded as imported again, even if unchanged.")
@click.option("--prune", is_flag=True, help="Retire ids of these sources that are no longer in them.")
@index_options(index_type_default="size and memory")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the import report as JSON.")
@verbosity
@friendly
def command(
    *,
    sources,
    out,
    model,
    revision,
    preprocess,
    kind,
    id_column,
    vector_column,
    path_column,
    metadata_columns,
    commit_every,
    commit_seconds,
    recheck,
    prune,
    no_index,
    index_type,
    memory_budget,
    recall_target,
    progress,
    as_json,
    verbose,
    quiet,
):
    """Import precomputed embeddings from SOURCES (Parquet files or globs, pybioclip JSON, clip-retrieval output)."""
    setup_logging(verbose, quiet)
    from indexer.build.importers import DeclaredModel, ImportColumns, ImportOptions, import_embeddings

    options = ImportOptions(
        columns=ImportColumns(
            id_column=id_column,
            vector_column=vector_column,
            path_column=path_column,
            metadata_columns=tuple(metadata_columns) or None,
        ),
        kind=kind,
        commit_every=commit_every,
        commit_seconds=commit_seconds,
        recheck=recheck,
        prune=prune,
        build_index=not no_index,
        index_factory=index_type,
        memory_budget=parse_size(memory_budget),
        recall_target=recall_target,
        progress=(sys.stderr.isatty() and not quiet) if progress is None else progress,
    )
    report = import_embeddings(out, list(sources), model=DeclaredModel(model, revision, preprocess), options=options)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    elif not quiet:
        click.echo(format_import_report(report))


def format_import_report(r) -> str:
    lines = [
        f"collection  {r.collection}",
        f"model       {r.model} ({r.dimension}-d)",
        f"read        {r.rows} rows from {r.files} files"
        + (f" ({r.files_skipped} files imported before and unchanged, not read again)" if r.files_skipped else ""),
        f"imported    {r.imported} new, {r.replaced} replaced (vector changed), {r.metadata_updated} metadata updates",
        f"unchanged   {r.unchanged}",
    ]
    if r.renormalised:
        lo, hi = r.norm_range or (0.0, 0.0)
        lines.append(
            f"normalised  {r.renormalised} vectors were not unit length (norms {lo:.3g} to {hi:.3g}) and were "
            "L2-normalised on the way in"
        )
    else:
        lines.append("normalised  every vector was already unit length")
    if r.duplicates:
        lines.append(f"duplicates  {r.duplicates} rows repeat an id seen earlier (the first one is kept)")
    if r.pruned:
        lines.append(f"pruned      {r.pruned} ids no longer in the sources")
    lines.append(
        f"failed      {r.failed}"
        + ("" if not r.failed else "  (" + ", ".join(f"{k}: {v}" for k, v in sorted(r.failed_by_reason.items())) + ")")
    )
    if r.replaced_by_failure:
        lines.append(f"retired     {r.replaced_by_failure} known ids whose new row is unusable")
    lines.append(f"time        {r.seconds:.1f}s, {r.rows_per_second:,.0f} rows/s")
    lines.append(f"total       {r.images} images in the collection (generation {r.generation})")
    if r.index:
        info = r.index.get("info") or {}
        rec = info.get("measured_recall")
        lines.append(
            f"index       {r.index.get('factory')}"
            + (f", recall@10 {rec:.3f}" if isinstance(rec, (int, float)) else "")
        )
    if r.failed:
        lines.append(f"see the failures with: bioclip-index failures {r.collection}")
    return "\n".join(lines)
