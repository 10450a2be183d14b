"""``bioclip-predict``: pybioclip's ``bioclip predict`` (Tree of Life at any rank, custom labels, bins)."""

from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass

import click

from indexer.cli.common import CONTEXT, friendly, setup_logging, verbosity
from indexer.cli.provenance import PYBIOCLIP_DEFAULT_MODEL, Provenance, format_rows, load_predict_model, write_output

__all__ = ["main", "parse_cls", "parse_bins"]

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


def parse_cls(value: str) -> list[str]:
    """pybioclip's ``--cls``: a path to a text file (one label per line) or comma-separated labels."""
    if os.path.exists(value):
        with open(value, encoding="utf-8") as fh:
            value = ",".join(line.strip() for line in fh)
    labels = [c.strip() for c in value.split(",") if c.strip()]
    if not labels:
        raise click.BadParameter("no labels given", param_hint="--cls")
    return labels


def parse_bins(path: str) -> dict[str, str]:
    """pybioclip's ``--bins``: a CSV with a header; the first column a label, the second its bin."""
    if not os.path.isfile(path):
        raise click.BadParameter(f"no such file: {path}", param_hint="--bins")
    bins: dict[str, str] = {}
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or len(rows[0]) < 2:
        raise click.BadParameter(f"{path}: CSV file must have at least two columns.", param_hint="--bins")
    for n, row in enumerate(rows[1:], start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        label, value = (row + ["", ""])[:2]
        if not value.strip():
            raise click.BadParameter(f"{path}, line {n}: label {label.strip()!r} has no bin", param_hint="--bins")
        bins[label.strip()] = value.strip()
    if not bins:
        raise click.BadParameter(f"{path}: no labels", param_hint="--bins")
    return bins


@click.command(
    "bioclip-predict",
    context_settings=CONTEXT,
    epilog=(
        "Examples:\n\n\b\n"
        "  bioclip-predict photo.jpg                                   # top 5 Tree-of-Life species\n"
        "  bioclip-predict photos/ --rank family --format table\n"
        "  bioclip-predict photo.jpg --cls 'crow,raven,magpie'\n"
        "  bioclip-predict 'traps/*.jpg' --cls labels.txt --k 3 --output predictions.csv --log run.json\n"
        "  bioclip-predict photo.jpg --bins bins.csv --model bioclip\n"
    ),
)
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--model",
    default=PYBIOCLIP_DEFAULT_MODEL,
    show_default=True,
    help="bioclip, bioclip-2, hf-hub:ORG/REPO, local-dir:PATH, ...",
)
@click.option("--revision", default=None, help="Pin a Hugging Face revision of the model.")
@click.option("--rank", type=click.Choice(RANKS), default=None, help="Tree-of-Life rank (default species).")
@click.option(
    "--k",
    type=click.IntRange(1),
    default=None,
    help="Top k (default 5 for the Tree of Life, all labels for --cls/--bins).",
)
@click.option("--cls", "cls", default=None, help="Labels: comma-separated, or a text file with one per line.")
@click.option(
    "--bins", type=click.Path(dir_okay=False), default=None, help="CSV of label,bin: probabilities summed per bin."
)
@click.option(
    "--reference-labels",
    type=click.Path(exists=True),
    default=None,
    help="Tree-of-Life label embeddings (txt_emb_*.npy + .json, or their folder); default: the Hugging Face cache.",
)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="csv", show_default=True)
@click.option("--output", default="stdout", show_default=True, help="Write here instead of stdout.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=10, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="cpu", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "auto"]), default="fp32", show_default=True)
@click.option(
    "--preprocess",
    type=click.Choice(["squash", "crop"]),
    default=None,
    help="Default: as pybioclip (squash for BioCLIP, crop otherwise).",
)
@click.option("--log", "log_path", default=None, help="Provenance log (.json: a JSON report; else text appended).")
@verbosity
@friendly
def main(
    *,
    images,
    model,
    revision,
    rank,
    k,
    cls,
    bins,
    reference_labels,
    fmt,
    output,
    batch_size,
    device,
    precision,
    preprocess,
    log_path,
    verbose,
    quiet,
):
    """Predict the taxa in IMAGES (files, folders, globs) zero-shot, as pybioclip does."""
    setup_logging(verbose, quiet)
    chosen = [name for name, v in (("--rank", rank), ("--cls", cls), ("--bins", bins)) if v is not None]
    if len(chosen) > 1:
        raise click.UsageError(f"{' and '.join(chosen)} cannot be combined (pybioclip's rule): pick one")
    labels = parse_cls(cls) if cls is not None else None
    bin_map = parse_bins(bins) if bins is not None else None
    from bioclip.images import expand_images

    files = expand_images(images)
    log = Provenance(log_path, None, {}) if log_path else None
    if log is not None:
        log.check()
    clip = load_predict_model(model, revision=revision, device=device, precision=precision, preprocess=preprocess)
    request = _Request(labels, bin_map, bins, reference_labels, rank, k, batch_size, quiet)
    rows, columns, settings, details = _predict(clip, files, request)
    write_output(format_rows(rows, columns, fmt), output)
    if log is not None:
        log.model, log.settings = clip, settings
        log.add(files, details)
        log.write()


@dataclass(frozen=True)
class _Request:
    labels: list[str] | None
    bins: dict[str, str] | None
    bins_path: str | None
    reference_labels: str | None
    rank: str | None
    k: int | None
    batch_size: int
    quiet: bool


def _predict(clip, files, req: _Request):
    from bioclip import predict as bp

    settings: dict = {}
    if req.bins is not None or req.labels is not None:
        names = list(req.bins) if req.bins is not None else list(req.labels or [])
        matrix = bp.custom_label_vectors(clip, names)
        columns = ["file_name", "classification", "score"]
    else:
        from bioclip.reference import load_reference_labels

        ref = load_reference_labels(clip.spec.source, req.reference_labels, dimension=clip.dimension)
        matrix = ref.embeddings
        settings = {
            "tree_of_life_version": ref.dataset or ref.npy,
            "reference_labels": ref.npy,
            "revision": ref.revision,
        }
        rank = req.rank or "species"
        columns = ["file_name", *bp.rank_columns(rank), "score"]
    embedded = _embed(clip, files, req.batch_size, req.quiet)
    for path, why in embedded.failures:
        click.echo(f"warning: cannot read {path}: {why}", err=True)
    if not embedded.files:
        raise click.ClickException("no image could be read")
    probs = bp.probabilities(embedded.features, matrix, clip.logit_scale)
    details: dict = {"k": req.k, "batch_size": req.batch_size}
    if req.bins is not None:
        rows = bp.predict_bins(embedded.files, probs, list(req.bins), req.bins, req.k)
        settings["bins_path"] = req.bins_path
    elif req.labels is not None:
        rows = bp.predict_custom(embedded.files, probs, req.labels, req.k)
        settings["classes"] = ",".join(req.labels)
    else:
        rows = bp.predict_tree_of_life(embedded.files, probs, ref.names, ref.common_names, rank=rank, k=req.k or 5)
        details = {"rank": rank, "min_prob": bp.MIN_PROB, "k": req.k or 5, "batch_size": req.batch_size}
    if embedded.failures:
        details["unreadable"] = [p for p, _ in embedded.failures]
    return rows, columns, {key: v for key, v in settings.items() if v is not None}, details


def _embed(clip, files, batch_size, quiet):
    from bioclip.images import embed_files

    if quiet or not sys.stderr.isatty():
        return embed_files(clip, files, batch_size=batch_size)
    from tqdm.auto import tqdm

    with tqdm(total=len(files), unit="img", desc="predicting") as bar:
        return embed_files(clip, files, batch_size=batch_size, progress=bar.update)
