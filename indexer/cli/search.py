"""``bioclip-search``: search a collection from the command line."""

from __future__ import annotations

import csv
import json
import sys

import click

from indexer.cli.common import CONTEXT, device_option, friendly, setup_logging, verbosity

__all__ = ["main"]

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


@click.command(context_settings=CONTEXT, epilog=_SEARCH_EPILOG)
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
@device_option
@verbosity
@friendly
def main(
    *,
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
    setup_logging(verbose, quiet)
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
    query = terms_from_options(
        text,
        plus=plus,
        minus=minus,
        images=images,
        minus_images=minus_images,
        ids=ids,
        minus_ids=minus_ids,
        terms=terms,
    )
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
