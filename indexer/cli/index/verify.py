"""``bioclip-index verify``: re-encode a sample and compare with the stored vectors (imported ones, mostly)."""

from __future__ import annotations

import json
import sys

import click

from indexer.cli.common import CONTEXT, device_option, friendly, setup_logging, verbosity

__all__ = ["command", "format_verify_report"]


@click.command(
    "verify",
    context_settings=CONTEXT,
    epilog=(
        "Examples:\n\n\b\n"
        "  bioclip-index verify ./tol.collection --sample 200\n"
        "  bioclip-index verify ./tol.collection --media-root https://images.example.org/=/data/tol-images\n"
        "  bioclip-index verify ./c --column image_url --json\n\n"
        "Exit status 0 when the verdict is match, 1 otherwise."
    ),
)
@click.argument("collection", type=click.Path(file_okay=False, exists=True))
@click.option("--sample", type=click.IntRange(1), default=100, show_default=True, help="Images to re-encode.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which sample (the same seed, the same images).")
@click.option(
    "--media-root",
    "media_roots",
    multiple=True,
    metavar="PREFIX=DIR",
    help="Read URLs starting with PREFIX from DIR (repeatable); other URLs are downloaded.",
)
@click.option("--column", default=None, help="Metadata column with the image path or URL (default: location).")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True)
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@verbosity
@friendly
def command(*, collection, sample, seed, media_roots, column, batch_size, device, as_json, verbose, quiet):
    """Re-encode a sample of COLLECTION's images and report the cosine between stored and fresh vectors."""
    setup_logging(verbose, quiet)
    from indexer.build.importers.verify import verify_collection
    from indexer.cli.index.build import parse_media_roots

    report = verify_collection(
        collection,
        sample=sample,
        seed=seed,
        media_roots=parse_media_roots(media_roots),
        column=column,
        device=device,
        batch_size=batch_size,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    elif not quiet:
        click.echo(format_verify_report(report))
    sys.exit(0 if report.verdict == "match" else 1)


def format_verify_report(r) -> str:
    lines = [
        f"collection  {r.collection}",
        f"model       {r.model}, {r.preprocess} preprocessing",
        f"sample      {r.sampled} images, {r.compared} re-encoded"
        + ("; unreadable: " + ", ".join(f"{k} {v}" for k, v in sorted(r.unreachable.items())) if r.unreachable else ""),
    ]
    s, o = r.summary(), r.summary(r.other_cosines)
    if s:
        lines.append(
            f"cosine      median {s['median']:.4f}, mean {s['mean']:.4f}, min {s['min']:.4f}, p5 {s['p5']:.4f}, "
            f"p95 {s['p95']:.4f}, max {s['max']:.4f}"
        )
        lines.append(f"with {r.other_preprocess:<6} median {o['median']:.4f}, min {o['min']:.4f}")
        for cos, key, loc in r.worst[:3]:
            lines.append(f"lowest      {cos:.4f}  {key}  ({loc})")
    lines.append(f"verdict     {r.verdict}: {r.advice}")
    lines.append("            (match: median >= 0.99 and at most 5% below 0.98; close: median >= 0.9)")
    return "\n".join(lines)
