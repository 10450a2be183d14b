"""Console scripts: bioclip-index, bioclip-search, bioclip-app, bioclip-demo.

The only module that imports click, and the only place (with the app) where named exceptions
become messages and exit codes. Heavy imports (torch, open_clip, faiss) happen inside commands.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click

# Idle OpenMP threads of the encoder sleep instead of spinning, so on a machine with few cores they
# leave the CPU to the decode workers between batches (set before torch is first imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["index_main", "search_main", "app_main", "demo_main"]

log = logging.getLogger("indexer.cli")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.I)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


def _friendly(fn: Callable) -> Callable:
    """Turn the library's named exceptions into one-line errors (exit status 1), never tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from bioclip.errors import BioclipError
        from indexer.errors import IndexerError

        try:
            return fn(*args, **kwargs)
        except (IndexerError, BioclipError) as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted; committed work is kept and the same command resumes it", err=True)
            sys.exit(130)

    return wrapper


def _parse_size(value: str | None) -> int | None:
    if value is None:
        return None
    m = _SIZE.match(value)
    if not m:
        raise click.BadParameter(f"{value!r} is not a size like 600MB or 4GB")
    mult = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def _verbosity(fn):
    fn = click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")(fn)
    fn = click.option("-q", "--quiet", is_flag=True, help="Only errors.")(fn)
    return fn


# ---------------------------------------------------------------------------------------------
# bioclip-index


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Example:\n\n\b\n  bioclip-index build ./photos --labels labels.csv --out ./photos.collection\n  bioclip-index info ./photos.collection",
)
@click.version_option(package_name="bioclip-search")
def index_main() -> None:
    """Build and inspect bioclip-search collections (image embeddings + metadata + ANN index)."""


@index_main.command(
    "build",
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
    "--batch-size",
    type=click.IntRange(1, 65536),
    default=None,
    help="Images per forward pass (default 8 on CPU; on a GPU, sized from its free memory).",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
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
@click.option("--prune", is_flag=True, help="Retire images whose files are gone from the sources.")
@click.option("--retry-failed", is_flag=True, help="Try recorded failures again even if unchanged.")
@click.option(
    "--rehash",
    is_flag=True,
    help="Read every file whose size and time look unchanged and re-encode it if its content hash differs.",
)
@click.option("--no-index", is_flag=True, help="Store vectors only; build the ANN index later with reindex.")
@click.option(
    "--index-type", default=None, help="FAISS index factory string (default: chosen from size and memory budget)."
)
@click.option("--memory-budget", default=None, help="Memory for the ANN index, e.g. 600MB, 8GB.")
@click.option("--recall-target", type=click.FloatRange(0.5, 1.0), default=0.95, show_default=True)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Downloaded media cache (default COLLECTION/cache/media).",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the build report as JSON.")
@_verbosity
@_friendly
def build_cmd(
    sources,
    out,
    model,
    revision,
    labels,
    source_type,
    path_column,
    media_roots,
    source_name,
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
    _setup_logging(verbose, quiet)
    from indexer.build import BuildOptions, build
    from indexer.build.sources import open_source

    roots = _parse_media_roots(media_roots)
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
        )
        for s in sources
    ]
    options = BuildOptions(
        batch_size=batch_size,
        workers=workers,
        commit_every=commit_every,
        commit_seconds=commit_seconds,
        max_pixels=max_pixels,
        prune=prune,
        retry_failed=retry_failed,
        rehash=rehash,
        build_index=not no_index,
        index_factory=index_type,
        memory_budget=_parse_size(memory_budget),
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
        return
    if not quiet:
        click.echo(_format_report(report))


def _parse_media_roots(items) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: write PREFIX=DIR", param_hint="--media-root")
        prefix, _, d = item.rpartition("=")
        if not prefix or not d:
            raise click.BadParameter(f"{item!r}: write PREFIX=DIR", param_hint="--media-root")
        out[prefix] = d
    return out


def _format_report(r) -> str:
    lines = [
        f"collection  {r.collection}",
        f"scanned     {r.scanned}",
        f"indexed     {r.encoded} encoded, {r.reused} reused by content hash, {r.metadata_updated} metadata updates",
        f"unchanged   {r.unchanged}",
    ]
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
    for name, rep in r.source_reports.items():
        counts = {k: v for k, v in rep.items() if isinstance(v, int) and not isinstance(v, bool) and v and k != "rows"}
        if counts:
            lines.append(f"source      {name}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()))
        for warning in rep.get("warnings") or []:
            lines.append(f"warning     {warning}")
    lines.append(f"time        {r.seconds:.1f}s, {r.images_per_second:.2f} images/s")
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


@index_main.command("info", epilog="Example:\n\n\b\n  bioclip-index info ./photos.collection --json")
@click.argument("collection", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_verbosity
@_friendly
def info_cmd(collection, as_json, verbose, quiet):
    """Show a collection's model, counts, index and failures by reason."""
    _setup_logging(verbose, quiet)
    from indexer.search.engine import SearchEngine

    info = SearchEngine.open(collection, refresh_interval=None).info()
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    idx = info.get("index_info") or {}
    rows = [
        ("collection", info["path"]),
        (
            "model",
            f"{info['model']} ({info['model_info'].get('source')}"
            + (f" @ {info['model_info'].get('revision')}" if info["model_info"].get("revision") else "")
            + ")",
        ),
        ("dimension", info["dimension"]),
        ("preprocess", json.dumps(info.get("preprocess"))),
        ("images", info["images"]),
        ("failures", info["failures"]),
        ("retired", info["retired"]),
        (
            "index",
            f"{info['index']}"
            + (
                f" (recall@10 {idx['measured_recall']:.3f})"
                if isinstance(idx.get("measured_recall"), (int, float))
                else ""
            ),
        ),
        ("not yet in index", info["unindexed_images"]),
        ("generation", info["generation"]),
        ("updated", info["updated"]),
    ]
    width = max(len(k) for k, _ in rows)
    out = [f"{k.ljust(width)}  {v}" for k, v in rows]
    if info["sources"]:
        out.append("by source:")
        out += [f"  {n:8d}  {s}" for s, n in info["sources"].items()]
    if info["failures_by_reason"]:
        out.append("failures by reason:")
        out += [f"  {n:8d}  {r}" for r, n in info["failures_by_reason"].items()]
    out.append("images per rank:")
    out += [f"  {rank:8s} {v['images']:8d} images, {v['taxa']} taxa" for rank, v in info["ranks"].items()]
    click.echo("\n".join(out))


@index_main.command("failures", epilog="Example:\n\n\b\n  bioclip-index failures ./photos.collection > failures.csv")
@click.argument("collection", type=click.Path())
@_verbosity
@_friendly
def failures_cmd(collection, verbose, quiet):
    """List the images that could not be indexed, as CSV (source, location, stage, reason, detail)."""
    _setup_logging(verbose, quiet)
    from indexer.search.engine import SearchEngine

    rows = SearchEngine.open(collection, refresh_interval=None).failures()
    w = csv.writer(sys.stdout)
    w.writerow(["key", "source", "location", "stage", "reason", "detail", "failed_at"])
    for r in rows:
        w.writerow([r["key"], r["source"], r["location"], r["stage"], r["reason"], r["detail"], r["failed_at"]])


@index_main.command("reindex", epilog="Example:\n\n\b\n  bioclip-index reindex ./photos.collection --index-type HNSW32")
@click.argument("collection", type=click.Path())
@click.option("--index-type", default=None, help="FAISS index factory string (default: chosen from size and budget).")
@click.option("--memory-budget", default=None, help="e.g. 600MB, 8GB.")
@click.option("--recall-target", type=click.FloatRange(0.5, 1.0), default=0.95, show_default=True)
@_verbosity
@_friendly
def reindex_cmd(collection, index_type, memory_budget, recall_target, verbose, quiet):
    """Rebuild the ANN index from the stored vectors (nothing is encoded again)."""
    _setup_logging(verbose, quiet)
    from indexer.ann import update_index
    from indexer.store import Collection

    col = Collection.open(collection)
    with col.writer() as w:
        entry = update_index(
            w, factory=index_type, memory_budget=_parse_size(memory_budget), recall_target=recall_target, force=True
        )
    if entry is None:
        click.echo("the collection is empty; no index built")
        return
    info = entry.get("info") or {}
    rec = info.get("measured_recall")
    click.echo(
        f"built {entry['factory']} over {info.get('n', '?')} vectors in {entry['seconds']}s"
        + (f", recall@10 {rec:.3f}" if isinstance(rec, (int, float)) else "")
    )


# ---------------------------------------------------------------------------------------------
# bioclip-search

_SEARCH_EPILOG = """Examples:

\b
  bioclip-search ./photos.collection "Corvus corax"              # a taxon, any rank, any case
  bioclip-search ./photos.collection "common raven" --k 20 --json  # a vernacular name
  bioclip-search ./photos.collection "a bird on a snowy branch"  # free text
  bioclip-search ./photos.collection --image query.jpg           # by picture
  bioclip-search ./photos.collection --id 42                     # more like image 42 (not itself)
  bioclip-search ./photos.collection Corvus --image photo.jpg --minus juvenile
  bioclip-search ./photos.collection --term text:2=Corvus --term image:1=photo.jpg --term text:-0.5=juvenile
  bioclip-search ./photos.collection Corvidae --where country=Kenya --where "year<1950"
  bioclip-search ./photos.collection "Felis catus" --where year=1900..1950 --where institutionCode=NHM --where institutionCode=MNHN
  bioclip-search ./photos.collection beetle --taxon Coleoptera --where has_coordinates=true --format csv
  bioclip-search ./photos.collection Corvus --group record --k 20 --offset 20 --min-score 0.2
  bioclip-search ./photos.collection --fields                    # what --where can filter on

\b
Filters (--where, repeatable; every condition must hold):
  FIELD=VALUE  FIELD!=VALUE  FIELD>VALUE  FIELD>=VALUE  FIELD<VALUE  FIELD<=VALUE
  FIELD~TEXT (contains)  FIELD=LOW..HIGH (range, either end optional)
  FIELD= (not given)  FIELD!= (given)
  Repeating FIELD=VALUE makes a set (any of the values). Text ignores case.
  FIELD is a Darwin Core column (country, institutionCode, year, basisOfRecord, typeStatus,
  license, ...), a key of the collection's extra fields, taxon (any rank, and everything below
  it) or has_coordinates.

\b
Combined queries: every term (TEXT, --plus, --minus, --image, --id, --term) is embedded as a unit
vector; the query is their weighted sum, normalised, so images rank by the weighted sum of their
cosine similarities to the terms. --minus terms have weight -1; --term KIND[:WEIGHT]=VALUE sets any
weight (KIND: text, taxon, image, id, vector = a .npy file)."""


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=_SEARCH_EPILOG
)
@click.argument("collection", type=click.Path())
@click.argument("text", required=False)
@click.option("--plus", "plus", multiple=True, metavar="TEXT", help="Add a text term (weight 1; repeatable).")
@click.option("--minus", "minus", multiple=True, metavar="TEXT", help="Subtract a text term (weight -1; repeatable).")
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False), help="Add a picture (repeatable).")
@click.option(
    "--minus-image", "minus_images", multiple=True, type=click.Path(dir_okay=False), help="Subtract a picture."
)
@click.option(
    "--id", "ids", multiple=True, type=int, help="More like this indexed image, which is left out (repeatable)."
)
@click.option("--minus-id", "minus_ids", multiple=True, type=int, help="Subtract an indexed image.")
@click.option(
    "--term",
    "terms",
    multiple=True,
    metavar="KIND[:W]=VALUE",
    help="A weighted term: text:-0.5=juvenile, image:2=a.jpg, id=42, taxon=Corvidae.",
)
@click.option("--k", type=click.IntRange(1, 10000), default=10, show_default=True, help="Number of results.")
@click.option(
    "--offset", type=click.IntRange(0), default=0, help="Skip this many results (paging; counts groups with --group)."
)
@click.option("--where", "where", multiple=True, metavar="FIELD=VALUE", help="Filter (repeatable); see below.")
@click.option(
    "--taxon",
    "taxa",
    multiple=True,
    metavar="NAME",
    help="Only this taxon, any rank, and everything below it (repeatable: any of them).",
)
@click.option("--min-score", type=float, default=None, help="Leave out results scoring below this cosine.")
@click.option(
    "--group",
    type=click.Choice(["record", "similar", "both"]),
    default=None,
    help="One result per specimen record (same recordID/occurrenceID/catalogNumber) and/or per near-identical picture.",
)
@click.option(
    "--group-similarity",
    type=click.FloatRange(-1.0, 1.0),
    default=0.95,
    show_default=True,
    help="Cosine at which pictures count as near-identical (--group similar/both).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "csv"]), default=None, help="Output format (default table)."
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--fields", "list_fields", is_flag=True, help="List the fields --where can filter on, and stop.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@_verbosity
@_friendly
def search_main(
    collection,
    text,
    plus,
    minus,
    images,
    minus_images,
    ids,
    minus_ids,
    terms,
    k,
    offset,
    where,
    taxa,
    min_score,
    group,
    group_similarity,
    fmt,
    as_json,
    list_fields,
    device,
    verbose,
    quiet,
):
    """Search COLLECTION by TEXT (free text or a taxon name), by pictures (--image), by indexed
    images (--id), or by a weighted combination of them, with metadata filters (--where)."""
    _setup_logging(verbose, quiet)
    from indexer.search.engine import SearchEngine
    from indexer.search.filters import Filter, parse_where
    from indexer.search.query import Grouping, terms_from_options

    fmt = "json" if as_json else (fmt or "table")
    filters = parse_where(where)
    if taxa:
        filters = filters & Filter.taxon(*taxa)
    engine = SearchEngine.open(collection, device=device, refresh_interval=None)
    if list_fields:
        _print_fields(engine.fields(), fmt)
        return
    query = terms_from_options(text, plus, minus, images, minus_images, ids, minus_ids, terms)
    if not query:
        raise click.UsageError("give TEXT, --image PATH, --id N or --term KIND=VALUE (or --fields)")
    grouping = None
    if group:
        grouping = Grouping(
            by_record=group in ("record", "both"), similarity=group_similarity if group in ("similar", "both") else None
        )
    result = engine.search(
        query=query, k=k, offset=offset, filters=filters or None, min_score=min_score, group=grouping
    )
    for n in result.notices:
        click.echo(f"note: {n}", err=True)
    if fmt == "json":
        click.echo(json.dumps([h.to_dict() for h in result.hits], indent=2, ensure_ascii=False, default=str))
        return
    if fmt == "csv":
        _write_csv(result.hits)
        return
    summary = f"{result.interpretation} -- {len(result.hits)} results"
    if result.candidates is not None:
        summary += f" of {result.candidates} matching the filters"
    click.echo(summary, err=True)
    for rank, h in enumerate(result.hits, start=offset + 1):
        name = h.scientific_name or "(no name)"
        common = h.get("vernacularName")
        extra = " | ".join(
            x
            for x in (h.get("catalogNumber"), h.get("institutionCode"), h.get("country"), str(h.get("year") or ""))
            if x
        )
        click.echo(
            f"{rank:3d}. {h.score:.4f}  id {h.id:<7d} {name}"
            + (f" ({common})" if common else "")
            + (f"  [{extra}]" if extra else "")
        )
        click.echo(f"      {h.location}")
        if h.group:
            click.echo(
                f"      +{len(h.group)} in its group: "
                + ", ".join(f"id {g.id} ({g.score:.4f})" for g in h.group[:8])
                + (" ..." if len(h.group) > 8 else "")
            )
    if result.has_more:
        click.echo(f"more: --offset {offset + k}", err=True)


def _print_fields(fields: list[tuple[str, str]], fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps([{"field": f, "type": t} for f, t in fields], indent=2))
        return
    if fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(["field", "type"])
        w.writerows(fields)
        return
    width = max(len(f) for f, _ in fields)
    for f, t in fields:
        click.echo(f"{f.ljust(width)}  {t}")


def _write_csv(hits) -> None:
    from indexer.store.schema import ALL_COLUMNS

    cols = ["id", "score", "location"] + [
        c
        for c in ALL_COLUMNS
        if c not in ("id", "location", "meta_hash") and any(h.metadata.get(c) is not None for h in hits)
    ]
    grouped = any(h.group for h in hits)
    w = csv.writer(sys.stdout)
    w.writerow(cols + (["group"] if grouped else []))
    for h in hits:
        d = h.to_dict()
        row = ["" if d.get(c) is None else d.get(c) for c in cols]
        if grouped:
            row.append(" ".join(str(g.id) for g in h.group))
        w.writerow(row)


# ---------------------------------------------------------------------------------------------
# bioclip-app and bioclip-demo


def _app_script() -> str:
    import search_ui

    return str(Path(search_ui.__file__).with_name("app.py"))


def run_app(collections: list[str], *, port: int, host: str, device: str, extra_env: dict | None = None) -> int:
    """Start the Streamlit app on ``collections`` (blocks until it stops); returns its exit status."""
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        _app_script(),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--client.showErrorDetails",
        "none",
        "--client.toolbarMode",
        "viewer",
        "--server.maxUploadSize",
        os.environ.get("BIOCLIP_SEARCH_MAX_UPLOAD_MB", "20"),
        "--",
        *[os.path.abspath(c) for c in collections],
        "--device",
        device,
    ]
    env = dict(os.environ, **(extra_env or {}))
    click.echo(f"bioclip-search app on http://{host}:{port}  (Ctrl-C to stop)", err=True)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Examples:\n\n\b\n  bioclip-app ./photos.collection --port 8501\n  bioclip-app ./herbarium.collection ./insects.collection",
)
@click.argument("collections", nargs=-1, required=True, type=click.Path())
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 to share on your network)."
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@_verbosity
@_friendly
def app_main(collections, port, host, device, verbose, quiet):
    """Start the search app (Streamlit) on one or more collections."""
    _setup_logging(verbose, quiet)
    from indexer.store import Collection

    for c in collections:
        Collection.open(c)  # fail here, with a message, rather than inside the app
    sys.exit(run_app(list(collections), port=port, host=host, device=device))


def sample_dir() -> Path:
    return Path(__file__).resolve().parent / "sample"


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
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--no-app", is_flag=True, help="Build the sample collection and stop.")
@_verbosity
@_friendly
def demo_main(out, model, port, host, device, no_app, verbose, quiet):
    """Index the built-in sample collection (real camera-trap, fish and cat photos) and open the app on it."""
    _setup_logging(verbose, quiet)
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
        click.echo(_format_report(report), err=True)
    else:
        click.echo(f"using the sample collection at {target}", err=True)
    if no_app:
        return
    sys.exit(run_app([str(target)], port=port, host=host, device=device))


if __name__ == "__main__":  # pragma: no cover
    index_main()
