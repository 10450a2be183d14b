"""``bioclip-demo``: index the built-in sample collection and open the app on it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from indexer.cli.app import run_app
from indexer.cli.common import device_option, friendly, setup_logging, verbosity
from indexer.cli.index.build import format_report

__all__ = ["main", "sample_dir", "default_demo_collection"]


def sample_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "sample"


def default_demo_collection() -> Path:
    base = os.environ.get("BIOCLIP_SEARCH_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "bioclip-search")
    return Path(base) / "demo.collection"


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Examples:\n\n\b\n  bioclip-demo\n  bioclip-demo --model local-dir:/models/bioclip --port 8600\n  bioclip-demo --no-app     # only build the sample collection",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Where to build the sample collection (default ~/.cache/bioclip-search/demo.collection).",
)
@click.option("--model", default=None, help="Model for the sample collection (default bioclip).")
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@device_option
@click.option("--no-app", is_flag=True, help="Build the sample collection and stop.")
@verbosity
@friendly
def main(*, out, model, port, host, device, no_app, verbose, quiet):
    """Index the built-in sample collection (real camera-trap, fish and cat photos) and open the app on it."""
    setup_logging(verbose, quiet)
    from indexer.build import BuildOptions, build
    from indexer.build.sources import FolderSource
    from indexer.store import Collection, is_collection

    target = Path(out) if out else default_demo_collection()
    sample = sample_dir()
    images = sample / "images"
    if not is_collection(target) or Collection.open(target).latest_generation().images == 0:
        click.echo(f"indexing the sample collection ({images}) into {target} ...", err=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        report = build(
            target,
            [FolderSource(images, labels=sample / "labels.csv", name="sample")],
            model_name=model,
            device=device,
            options=BuildOptions(progress=sys.stderr.isatty()),
        )
        click.echo(format_report(report), err=True)
    else:
        click.echo(f"using the sample collection at {target}", err=True)
    if no_app:
        return
    sys.exit(run_app([str(target)], port=port, host=host, device=device))
