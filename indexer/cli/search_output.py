"""``bioclip-search``'s output (table, JSON, CSV) from a search answer (the API's JSON,
:func:`indexer.serve.payload.search_payload`), whichever way the answer came."""

from __future__ import annotations

import csv
import json
import sys
from typing import Any

import click

__all__ = ["render", "print_fields"]

#: What a server adds to each hit for its own clients, left out of the command line's output.
_SERVER_ONLY = ("links",)


def _hits(payload: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.items() if k not in _SERVER_ONLY} for h in payload["hits"]]


def _name(h: dict[str, Any]) -> str | None:
    if h.get("scientificName"):
        return h["scientificName"]
    g, s = h.get("genus"), h.get("specificEpithet")
    return f"{g} {s}" if g and s else None


def render(payload: dict[str, Any], fmt: str) -> None:
    """Notices to stderr, then the hits in ``fmt`` (table, json, csv) to stdout."""
    for n in payload["notices"]:
        click.echo(f"note: {n}", err=True)
    hits = _hits(payload)
    if fmt == "json":
        # The whole answer: how the query was understood, notices, paging, hits (extra an object);
        # the keys a server adds for its own clients (the collection's name) are left out.
        from indexer.serve.payload import PAYLOAD_KEYS

        answer = {key: payload[key] for key in PAYLOAD_KEYS if key in payload}
        click.echo(json.dumps({**answer, "hits": hits}, indent=2, ensure_ascii=False))
        return
    if fmt == "csv":
        from indexer.search.output import csv_rows

        csv.writer(sys.stdout, lineterminator="\n").writerows(csv_rows({**payload, "hits": hits}))
        return
    offset, k = payload["offset"], payload["k"]
    summary = f"{payload['interpretation']} -- {len(hits)} results"
    if payload["candidates"] is not None:
        summary += f" of {payload['candidates']} matching the filters"
    click.echo(summary, err=True)
    if payload.get("searched_as"):
        click.echo(payload["searched_as"], err=True)
    for rank, h in enumerate(hits, start=offset + 1):
        name = _name(h) or "(no name)"
        common = h.get("vernacularName")
        extra = " | ".join(
            str(x) for x in (h.get("catalogNumber"), h.get("institutionCode"), h.get("country"), h.get("year")) if x
        )
        click.echo(
            f"{rank:3d}. {h['score']:.4f}  id {h['id']:<7d} {name}"
            + (f" ({common})" if common else "")
            + (f"  [{extra}]" if extra else "")
        )
        if h.get("location"):
            click.echo(f"      {h['location']}")
        group = h.get("group") or []
        if group:
            click.echo(
                f"      +{len(group)} in its group: "
                + ", ".join(f"id {g['id']} ({g['score']:.4f})" for g in group[:8])
                + (" ..." if len(group) > 8 else "")
            )
    if payload["has_more"]:
        click.echo(f"more: --offset {offset + k}", err=True)


def print_fields(fields: list[tuple[str, str]], fmt: str) -> None:
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
