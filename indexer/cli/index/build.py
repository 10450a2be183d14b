"""``bioclip-index build``: index images from sources into a collection (resumable, incremental)."""

from __future__ import annotations

import json
import sys

import click

from indexer.cli.common import (
    CONTEXT,
    device_option,
    friendly,
    index_options,
    parse_size,
    setup_logging,
    verbosity,
)

__all__ = ["command", "format_report"]


@click.command(
    "build",
    context_settings=CONTEXT,
    epilog=(
        "Examples:\n\n\b\n"
        "  bioclip-index build ./photos --out ./photos.collection\n"
        "  bioclip-index build ./photos --labels labels.csv --out ./photos.collection --model bioclip-2\n"
        "  bioclip-index build dwca-export.zip --out ./museum.collection --media-root https://media.example.org/=/data/media\n"
        "  bioclip-index build 'shards/{000..099}.tar' --out ./shards.collection --device cuda\n\n"
        "Run the same command again to resume an interrupted build or to add new and changed images."
    ),
)
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False), help="Collection folder (created if missing)."
)
@click.option(
    "--model",
    default=None,
    help="bioclip (default), bioclip-2, hf-hub:ORG/REPO[@REV], local-dir:PATH, ARCH:TAG, ARCH:CHECKPOINT.",
)
@click.option("--revision", default=None, help="Pin a Hugging Face revision (branch, tag or commit).")
@click.option(
    "--labels",
    type=click.Path(dir_okay=False),
    default=None,
    help="CSV joined on its path column (relative to the folder).",
)
@click.option("--source-type", default=None, help="folder, dwca, manifest, tar, ... (default: detected).")
@click.option("--path-column", default=None, help="Manifest column with the image path or URL (default: detected).")
@click.option(
    "--media-root",
    "media_roots",
    multiple=True,
    metavar="PREFIX=DIR",
    help="Read URLs starting with PREFIX from DIR instead (repeatable).",
)
@click.option(
    "--name",
    "source_name",
    default=None,
    help="A stable name for the source (default: its path); keys of a re-downloaded archive then stay the same.",
)
@click.option(
    "--license-from-record",
    "record_license",
    is_flag=True,
    help="Darwin Core Archives: a record's license also covers its images that have none of their own "
    "(by default an image's license is only its media row's).",
)
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Exit 0 even when the collection ends with no images (by default that is an error, exit status 1).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 65536),
    default=None,
    help="Images per forward pass (default 8 on CPU; on a GPU, sized from its free memory).",
)
@device_option
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True)
@click.option(
    "--preprocess",
    type=click.Choice(["squash", "crop"]),
    default=None,
    help="Image preprocessing for a new collection (default squash).",
)
@click.option(
    "--workers", type=click.IntRange(0, 256), default=None, help="Decode worker processes (default: from the cores)."
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: decode tasks and GPU encoder actors on Ray Data (pip install 'bioclip-search[ray]').",
)
@click.option(
    "--ray-address",
    default=None,
    help="Ray cluster to join (auto, ray://head:10001); default: RAY_ADDRESS, a `ray start` cluster here, else a new local one.",
)
@click.option(
    "--commit-every", type=click.IntRange(1), default=2048, show_default=True, help="Commit after this many images..."
)
@click.option("--commit-seconds", type=float, default=60.0, show_default=True, help="...or this many seconds.")
@click.option(
    "--max-pixels",
    type=click.IntRange(1),
    default=None,
    help="Larger images are recorded as failures (default 400 MP).",
)
@click.option(
    "--gpu-decode/--cpu-decode",
    default=None,
    help="Decode plain JPEGs in batches on the model's device (nvJPEG) and resize them there; other formats and "
    "files it rejects are decoded on the CPU (default: on a CUDA device).",
)
@click.option(
    "--follow-symlinks",
    is_flag=True,
    help="Follow symbolic links that lead outside a source folder (by default they are counted and skipped; "
    "links inside the folder are always followed).",
)
@click.option("--prune", is_flag=True, help="Retire images whose files are gone from the sources.")
@click.option("--retry-failed", is_flag=True, help="Try recorded failures again even if unchanged.")
@click.option(
    "--rehash",
    is_flag=True,
    help="Read every file whose size and time look unchanged and re-encode it if its content hash differs.",
)
@index_options()
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Downloaded media cache (default COLLECTION/cache/media).",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the build report as JSON.")
@verbosity
@friendly
def command(
    *,
    sources,
    out,
    model,
    revision,
    labels,
    source_type,
    path_column,
    media_roots,
    source_name,
    record_license,
    allow_empty,
    batch_size,
    device,
    precision,
    preprocess,
    workers,
    executor,
    ray_address,
    commit_every,
    commit_seconds,
    max_pixels,
    gpu_decode,
    follow_symlinks,
    prune,
    retry_failed,
    rehash,
    no_index,
    index_type,
    memory_budget,
    recall_target,
    cache_dir,
    progress,
    as_json,
    verbose,
    quiet,
):
    """Index images from SOURCES (folders, manifests, Darwin Core Archives, tar shards) into a collection."""
    setup_logging(verbose, quiet)
    from indexer.build import BuildOptions, build
    from indexer.build.sources import open_source

    roots = parse_media_roots(media_roots)
    if labels and len(sources) > 1:
        raise click.UsageError("--labels applies to one folder; give one SOURCE with it")
    if source_name and len(sources) > 1:
        raise click.UsageError("--name applies to one SOURCE")
    srcs = [
        open_source(
            s,
            source_type=source_type,
            labels=labels,
            path_column=path_column,
            media_roots=roots or None,
            name=source_name,
            record_license=record_license,
            follow_symlinks=follow_symlinks,
        )
        for s in sources
    ]
    options = BuildOptions(
        batch_size=batch_size,
        workers=workers,
        commit_every=commit_every,
        commit_seconds=commit_seconds,
        max_pixels=max_pixels,
        gpu_decode=gpu_decode,
        prune=prune,
        retry_failed=retry_failed,
        rehash=rehash,
        build_index=not no_index,
        index_factory=index_type,
        memory_budget=parse_size(memory_budget),
        recall_target=recall_target,
        cache_dir=cache_dir,
        progress=(sys.stderr.isatty() and not quiet) if progress is None else progress,
        executor=executor,
        ray_address=ray_address,
    )
    report = build(
        out,
        srcs,
        model_name=model,
        revision=revision,
        device=device,
        precision=precision,
        preprocess=preprocess,
        options=options,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    elif not quiet:
        click.echo(format_report(report))
    if report.images == 0 and not allow_empty:
        raise click.ClickException(empty_message(report))
    if report.images == 0 and not quiet:
        click.echo(f"note: {empty_message(report, allowed=True)}", err=True)


def empty_message(report, *, allowed: bool = False) -> str:
    """Why the collection has no images, in one line (and, unless ``allowed``, how to accept that)."""
    why = [
        f"{name} is {rep['empty_because']}" for name, rep in report.source_reports.items() if rep.get("empty_because")
    ]
    reason = why[0] if why else f"{report.scanned} items scanned, {report.failed} failed"
    tail = "" if allowed else "; --allow-empty accepts an empty collection"
    return f"the collection {report.collection} has no images: {reason}{tail}"


def parse_media_roots(items) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: write PREFIX=DIR", param_hint="--media-root")
        prefix, _, d = item.rpartition("=")
        if not prefix or not d:
            raise click.BadParameter(f"{item!r}: write PREFIX=DIR", param_hint="--media-root")
        out[prefix] = d
    return out


def format_report(r) -> str:
    lines = [
        f"collection  {r.collection}",
        f"scanned     {r.scanned}",
        f"indexed     {r.encoded} encoded, {r.reused} reused by content hash, {r.metadata_updated} metadata updates",
        f"unchanged   {r.unchanged}",
    ]
    if r.decoded_on_device:
        lines.append(f"decoded     {r.decoded_on_device} JPEGs in batches on the model's device (--gpu-decode)")
    if r.rehashed:
        lines.append(f"rehashed    {r.rehashed} files read to compare content")
    if r.replaced or r.pruned or r.replaced_by_failure:
        lines.append(
            f"retired     {r.replaced} replaced, {r.pruned} pruned"
            + (f", {r.replaced_by_failure} changed files that no longer read" if r.replaced_by_failure else "")
        )
    if r.pruned_failures:
        lines.append(f"cleared     {r.pruned_failures} failures of files that are gone")
    if r.skipped_failed:
        lines.append(f"skipped     {r.skipped_failed} known failures (use --retry-failed to try them again)")
    lines.append(
        f"failed      {r.failed}"
        + ("" if not r.failed else "  (" + ", ".join(f"{k}: {v}" for k, v in sorted(r.failed_by_reason.items())) + ")")
    )
    if r.alternative_locations:
        lines.append(f"alternative {r.alternative_locations} images read from their alternative URL (the first failed)")
    for name, rep in r.source_reports.items():
        counts = {k: v for k, v in rep.items() if isinstance(v, int) and not isinstance(v, bool) and v and k != "rows"}
        if counts:
            lines.append(f"source      {name}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()))
        for warning in rep.get("warnings") or []:
            lines.append(f"warning     {warning}")
        if rep.get("empty_because") and r.images:  # with no images at all, the error line says it
            lines.append(f"warning     {name} is {rep['empty_because']}")
    lines += normalised_lines(r.normalised)
    lines.append(f"time        {r.seconds:.1f}s, {r.images_per_second:.2f} images/s")
    lines.append(f"total       {r.images} images in the collection (generation {r.generation})")
    if r.index:
        from indexer.ann.info import kind_rows, kind_summary

        per_kind = ", ".join(f"{row['kind']} {row['recall']}" for row in kind_rows(kind_summary(r.index.get("info"))))
        lines.append(
            f"index       {r.index.get('factory')}, recall@10 {per_kind} (queries measured on: bioclip-index info)"
        )
    if r.failed:
        lines.append(f"see the failures with: bioclip-index failures {r.collection}")
    return "\n".join(lines)


def normalised_lines(normalised: dict) -> list[str]:
    """What the value normalisation changed and what it could not resolve, one line per field."""
    lines = []

    def examples(rep: dict) -> str:
        shown = [f"{v!r} x{n}" for v, n in rep.get("examples") or []]
        return f" ({', '.join(shown)})" if shown else ""

    for field, label in (("basisOfRecord", "basisOfRecord"), ("license", "license")):
        rep = normalised.get(field) or {}
        if rep.get("changed") or rep.get("unrecognised"):
            text = f"{rep.get('changed', 0)} rows to one spelling"
            if rep.get("unrecognised"):
                text += f", {rep['unrecognised']} rows not recognised, kept as written{examples(rep)}"
            lines.append(f"values      {label}: {text}")
    rep = normalised.get("country") or {}
    if rep.get("changed") or rep.get("unresolved"):
        text = f"{rep.get('changed', 0)} rows normalised ({rep.get('filled', 0)} filled from the other column)"
        if rep.get("conflicts"):
            text += f", {rep['conflicts']} rows whose country and countryCode disagree (the code wins)"
        if rep.get("unresolved"):
            text += f", {rep['unresolved']} rows name no ISO 3166 country, kept as written{examples(rep)}"
        lines.append(f"values      country/countryCode: {text}")
    rep = normalised.get("names") or {}
    if rep.get("changed") or rep.get("unparsable"):
        parts = [
            f"{label} {rep[k]}"
            for k, label in (
                ("genus_filled", "genus filled"),
                ("epithet_filled", "epithet filled"),
                ("rank_filled", "taxonRank set"),
                ("higher_rank_filled", "higher rank filled"),
            )
            if rep.get(k)
        ]
        text = f"{rep.get('changed', 0)} rows made consistent with scientificName and taxonRank"
        if parts:
            text += f" ({', '.join(parts)})"
        if rep.get("unparsable"):
            text += f"; {rep['unparsable']} rows whose name does not parse{examples(rep)}"
        lines.append(f"values      names: {text}")
    return lines
