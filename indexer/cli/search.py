"""``bioclip-search``: search a collection from the command line."""

from __future__ import annotations

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
@click.option(
    "--log-queries",
    is_flag=True,
    help="Keep this query's vector (no text) in the collection's query log, for reindex to tune on "
    "(searches in this process, not through the background server).",
)
@click.option("--log-query-text", is_flag=True, help="Log the query's words too (implies --log-queries).")
@click.option(
    "--server",
    "server",
    envvar="BIOCLIP_SEARCH_SERVER",
    metavar="URL",
    help="Ask this bioclip-serve server (COLLECTION: its name there; key in $BIOCLIP_SEARCH_API_KEY).",
)
@click.option(
    "--no-server",
    "no_server",
    is_flag=True,
    envvar="BIOCLIP_SEARCH_NO_SERVER",
    help="Search in this process; start no background server.",
)
@device_option
@verbosity
@friendly
def main(
    *,
    collection,
    as_json,
    fmt,
    list_fields,
    server,
    no_server,
    log_queries,
    log_query_text,
    device,
    verbose,
    quiet,
    **opts,
):
    """Search COLLECTION by TEXT (free text or a taxon name), by pictures (--image), by indexed
    images (--id), or by a weighted combination of them, with metadata filters (--where).

    The first query starts a background server for the collection, so later ones skip loading the
    model (it stops after $BIOCLIP_SEARCH_IDLE_MINUTES, 30, idle minutes; see bioclip-serve status)."""
    setup_logging(verbose, quiet)
    from indexer.cli.search_output import print_fields, render
    from indexer.cli.search_request import DirectTransport, build_request, choose_transport

    fmt = "json" if as_json else (fmt or "table")
    request = None
    if not list_fields:
        request = build_request(opts)
        if not request["terms"]:
            raise click.UsageError("give TEXT, --image PATH, --id N or --term KIND=VALUE (or --fields)")
    logging_on = ("text" if log_query_text else "vectors") if log_queries or log_query_text else False
    if logging_on and server:
        raise click.UsageError("--log-queries logs in this process; a bioclip-serve server keeps its own log")
    if logging_on:  # the query log is this process's engine's
        transport = DirectTransport(collection, device, log_queries=logging_on)
    else:
        transport = choose_transport(collection, server=server, no_server=no_server, device=device)
    if list_fields:
        print_fields(_answer(transport, "fields", None, collection, device), fmt)
        return
    render(_answer(transport, "search", request, collection, device), fmt)


def _answer(transport, what: str, request, collection: str, device: str):
    """The transport's answer; a background server that stopped answering is replaced once."""
    from indexer.cli.search_request import DirectTransport, LocalServerTransport
    from indexer.serve.client import ServerUnavailable

    def ask(t):
        return t.fields() if what == "fields" else t.search(request)

    try:
        return ask(transport)
    except ServerUnavailable as exc:
        if not isinstance(transport, LocalServerTransport):
            raise click.ClickException(str(exc)) from None
        from indexer.serve.local import LocalServerError, forget

        forget(transport.server)
        try:
            return ask(LocalServerTransport(collection, device))
        except (ServerUnavailable, LocalServerError) as again:
            click.echo(f"note: the background server does not answer ({again}); searching directly", err=True)
            return ask(DirectTransport(collection, device))


if __name__ == "__main__":
    main()
