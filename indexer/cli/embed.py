"""``bioclip-embed``: image embeddings to a file, as pybioclip's ``bioclip embed`` (JSON) or as Parquet / npy."""

from __future__ import annotations

import json
import os
import sys

import click

from indexer.cli.common import CONTEXT, friendly, setup_logging, verbosity
from indexer.cli.provenance import PYBIOCLIP_DEFAULT_MODEL, load_predict_model

__all__ = ["main"]


def _format_of(output: str, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffix = os.path.splitext(output)[1].lower()
    return {".parquet": "parquet", ".pq": "parquet", ".npy": "npy"}.get(suffix, "json")


@click.command(
    "bioclip-embed",
    context_settings=CONTEXT,
    epilog=(
        "Examples:\n\n\b\n"
        "  bioclip-embed photos/ --output embeddings.json             # pybioclip's layout\n"
        "  bioclip-embed 'traps/*.jpg' --output emb.parquet --normalize   # image_path + emb, importable\n"
        "  bioclip-embed photo.jpg --output emb.npy                   # (n, d) float32 + emb.json naming the rows\n\n"
        "Then: bioclip-index import embeddings.json --out ./photos.collection"
    ),
)
@click.argument("images", nargs=-1, required=True)
@click.option("--output", default="stdout", show_default=True, help="File to write (JSON to stdout by default).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "json", "npy"]),
    default=None,
    help="Default: from the --output suffix, else json.",
)
@click.option(
    "--normalize/--no-normalize",
    default=False,
    show_default=True,
    help="L2-normalise the vectors (pybioclip writes raw ones).",
)
@click.option(
    "--model",
    default=PYBIOCLIP_DEFAULT_MODEL,
    show_default=True,
    help="bioclip, bioclip-2, hf-hub:ORG/REPO, local-dir:PATH, ...",
)
@click.option("--revision", default=None, help="Pin a Hugging Face revision of the model.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=10, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="cpu", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "auto"]), default="fp32", show_default=True)
@click.option(
    "--preprocess",
    type=click.Choice(["squash", "crop"]),
    default=None,
    help="Default: as pybioclip (squash for BioCLIP, crop otherwise).",
)
@verbosity
@friendly
def main(*, images, output, fmt, normalize, model, revision, batch_size, device, precision, preprocess, verbose, quiet):
    """Embed IMAGES (files, folders, globs) with the model and write the vectors to --output."""
    setup_logging(verbose, quiet)
    from bioclip.images import embed_files, expand_images

    kind = _format_of(output, fmt)
    if kind != "json" and output == "stdout":
        raise click.UsageError(f"--format {kind} needs --output FILE")
    files = expand_images(images)
    clip = load_predict_model(model, revision=revision, device=device, precision=precision, preprocess=preprocess)
    embedded = embed_files(clip, files, batch_size=batch_size, normalize=normalize)
    for path, why in embedded.failures:
        click.echo(f"warning: cannot read {path}: {why}", err=True)
    if not embedded.files:
        raise click.ClickException("no image could be read")
    source = clip.spec.source
    info = {
        "model": source,
        "revision": clip.revision,
        "normalized": bool(normalize),
        "preprocess": clip.preprocess_config.to_dict(),
    }
    if kind == "json":
        doc = {"model": source, "embeddings": {f: v.tolist() for f, v in zip(embedded.files, embedded.features)}}
        if output == "stdout":
            click.echo(json.dumps(doc, indent=4))
        else:
            with open(output, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=4)
    elif kind == "parquet":
        _write_parquet(output, embedded, info)
    else:
        import numpy as np

        np.save(output, embedded.features.astype(np.float32), allow_pickle=False)
        sidecar = os.path.splitext(output)[0] + ".json"
        with open(sidecar, "w", encoding="utf-8") as fh:
            json.dump({**info, "images": embedded.files}, fh, indent=2)
    if not quiet and output != "stdout":
        click.echo(
            f"embedded {len(embedded.files)} images ({clip.dimension}-d, {'normalised' if normalize else 'raw'}) to {output}",
            err=True,
        )
    if embedded.failures:
        sys.exit(1 if not embedded.files else 0)


def _write_parquet(output: str, embedded, info: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from indexer.build.importers.readers import EMBEDDINGS_METADATA_KEY

    d = embedded.features.shape[1]
    emb = pa.FixedSizeListArray.from_arrays(pa.array(embedded.features.reshape(-1)), d).cast(pa.list_(pa.float32()))
    table = pa.table({"image_path": embedded.files, "emb": emb})
    table = table.replace_schema_metadata({EMBEDDINGS_METADATA_KEY: json.dumps(info).encode()})
    pq.write_table(table, output)
