"""``bioclip-index curate``: the curator's lists (misidentified, unidentified, duplicates, outliers)."""

from __future__ import annotations

import json
import sys

import click

from indexer.cli.common import CONTEXT, device_option, friendly, setup_logging, verbosity

__all__ = ["command"]

_TABLE = {
    "misidentified": (
        "id",
        "catalogNumber",
        "label",
        "start_rank",
        "suggested",
        "rank",
        "score",
        "neighbour_share",
        "zeroshot",
    ),
    "unidentified": (
        "id",
        "catalogNumber",
        "label",
        "suggested",
        "rank",
        "score",
        "neighbour_share",
        "zeroshot",
        "alternatives",
    ),
    "duplicates": ("id", "members", "score", "institutionCode", "source"),
    "outliers": ("id", "catalogNumber", "label", "score", "location"),
}


@click.command(
    "curate",
    context_settings=CONTEXT,
    epilog=(
        "Examples:\n\n\b\n"
        "  bioclip-index curate ./museum.collection\n"
        "  bioclip-index curate ./museum.collection --kind misidentified --rank family --min-confidence 0.6\n"
        "  bioclip-index curate ./museum.collection --kind unidentified --where institutionCode=NHM --format csv --out todo.csv\n"
        "  bioclip-index curate ./museum.collection --kind misidentified --format dwc --out identifications.csv\n"
        "  bioclip-index curate ./museum.collection --kind duplicates --duplicate-cosine 0.98 --format json\n\n"
        "The first run computes the curation data (in COLLECTION/curation/); later runs bring it up to date\n"
        "with what the collection gained or lost. Scores and thresholds: docs/CURATION.md."
    ),
)
@click.argument("collection", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--kind",
    type=click.Choice(["misidentified", "unidentified", "duplicates", "outliers"]),
    default=None,
    help="The list to print (default: how many entries each list has).",
)
@click.option("--rank", default="species", show_default=True, help="Compare labels / suggest names down to this rank.")
@click.option(
    "--min-confidence",
    type=float,
    default=None,
    help="Least score of an entry (default: misidentified 0.5, unidentified 0.8, outliers 3; see docs/CURATION.md).",
)
@click.option(
    "--duplicate-cosine",
    type=click.FloatRange(0, 1),
    default=0.97,
    show_default=True,
    help="Near-duplicates: images at least this similar.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "dwc"]),
    default="table",
    show_default=True,
    help="dwc: a Darwin Core Identification extension CSV (one row per suggestion).",
)
@click.option(
    "--out", type=click.Path(dir_okay=False), default=None, help="Write the list to this file (default: stdout)."
)
@click.option(
    "--where", multiple=True, metavar="FIELD=VALUE", help="Only images passing these filters (as in bioclip-search)."
)
@click.option("--taxon", default=None, help="Only this taxon (any rank) and what is below it.")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many entries.")
@click.option("--include-decided", is_flag=True, help="Also entries a curator accepted or rejected.")
@click.option("--k", "k", type=click.IntRange(1, 100), default=10, show_default=True, help="Neighbours per image.")
@click.option(
    "--reference-labels",
    default=None,
    metavar="PATH|cache",
    help="Also score against the Tree-of-Life species (txt_emb_species.npy + .json at PATH, or 'cache': an existing Hugging Face cache). Never downloaded.",
)
@click.option("--full", is_flag=True, help="Recompute everything (else: bring the stored data up to date).")
@click.option("--no-update", is_flag=True, help="List from the stored data as it is, without bringing it up to date.")
@device_option
@verbosity
@friendly
def command(
    *, collection, kind, rank, min_confidence, duplicate_cosine, fmt, out, where, taxon, limit,
    include_decided, k, reference_labels, full, no_update, device, verbose, quiet,
):  # fmt: skip
    """Find likely misidentifications, suggest names for unidentified images, group duplicates and
    find outliers in COLLECTION."""
    setup_logging(verbose, quiet)
    from indexer.curate import CurateOptions, Curation, ListOptions, curate
    from indexer.curate.compute import open_engine
    from indexer.curate.export import DWC_COLUMNS, PLAIN_COLUMNS, dwc_rows, plain_rows, to_json, write_csv

    engine = open_engine(collection)
    engine._device = device
    if not no_update:
        report = curate(
            engine,
            options=CurateOptions(
                k=k, reference_labels=reference_labels, full=full, progress=not quiet and sys.stderr.isatty()
            ),
        )
        if not quiet:
            how = "up to date" if report.up_to_date else ("computed" if report.full else "brought up to date")
            click.echo(
                f"curation data {how}: {report.images:,} images, generation {report.generation} "
                f"({report.searched:,} searched, {report.predicted:,} scored, {report.seconds:.1f}s)",
                err=True,
            )
    cur = Curation.open(engine)
    filters = tuple(where) + ((f"taxon={taxon}",) if taxon else ())
    opts = ListOptions(
        rank=rank, min_confidence=min_confidence, duplicate_cosine=duplicate_cosine, filters=filters,
        include_decided=include_decided, limit=limit,
    )  # fmt: skip
    if kind is None and fmt != "dwc":
        counts = {kd: len(cur.entries(kd, opts)) for kd in ("misidentified", "unidentified", "duplicates", "outliers")}
        if fmt == "json":
            _emit(json.dumps(counts, indent=2) + "\n", out)
        else:
            lines = [f"{kd:<14}{n:>8,}" for kd, n in counts.items()]
            _emit("\n".join(lines) + f"\n\nSee one list: bioclip-index curate {collection} --kind misidentified\n", out)
        return
    kinds = [kind] if kind else ["misidentified", "unidentified"]
    entries = [e for kd in kinds for e in cur.entries(kd, opts)]
    decisions = cur.decisions.latest()
    if fmt == "dwc":
        text = write_csv(dwc_rows(engine, entries, cur.model_label(), decisions), DWC_COLUMNS)
    else:
        rows = plain_rows(engine, entries, decisions)
        if fmt == "csv":
            text = write_csv(rows, PLAIN_COLUMNS)
        elif fmt == "json":
            text = to_json(entries, rows) + "\n"
        else:
            from indexer.cli.provenance import format_rows

            text = format_rows(rows, _TABLE[kinds[0]], "table") if rows else f"no {kinds[0]} entries\n"
    _emit(text or "", out)


def _emit(text: str, out: str | None) -> None:
    if out is None:
        click.echo(text, nl=False)
        return
    from indexer.store.files import atomic_write_text

    atomic_write_text(out, text)
    click.echo(f"wrote {out}", err=True)
