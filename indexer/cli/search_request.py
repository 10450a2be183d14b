"""``bioclip-search``'s options -> one search request (the API's JSON), and the three ways to answer
it: a user's background server (:class:`LocalServerTransport`, started by the first query), a
server named by ``--server URL`` (:class:`RemoteTransport`), or the engine in this process
(:class:`DirectTransport`, ``--no-server``). All three answer with the same JSON
(:mod:`indexer.serve.payload`), so the output does not depend on the path taken.

Building the request and talking to a server import neither numpy nor torch: a warm query costs
the interpreter's start and one round trip.
"""

from __future__ import annotations

import base64
import math
import os
import re
from pathlib import Path
from typing import Any

import click

from indexer.errors import QueryError
from indexer.media.localfs import _MAX_VECTOR_FILE, MAX_IMAGE_BYTES, read_query_file

__all__ = [
    "build_request",
    "term_spec",
    "DirectTransport",
    "LocalServerTransport",
    "RemoteTransport",
    "choose_transport",
    "SERVER_ENV",
    "NO_SERVER_ENV",
    "API_KEY_ENV",
]

SERVER_ENV = "BIOCLIP_SEARCH_SERVER"
NO_SERVER_ENV = "BIOCLIP_SEARCH_NO_SERVER"
API_KEY_ENV = "BIOCLIP_SEARCH_API_KEY"

#: The same grammar as :func:`indexer.search.query.parse_term` (tests keep the two in step).
_TERM = re.compile(r"^\s*(text|taxon|image|id|vector)\s*(?::\s*([^=]*?))?\s*=(.*)$", re.S | re.I)
_KINDS = "text, taxon, image, id, vector"


def _b64_file(path: str, what: str) -> str:
    """A query file's bytes as base64: a regular file within the limit, as the engine reads it
    (a device, FIFO or folder is refused before anything is read)."""
    limit = MAX_IMAGE_BYTES if what == "image" else _MAX_VECTOR_FILE
    data = read_query_file(path, limit, "image" if what == "image" else "vector file")
    return base64.b64encode(data).decode("ascii")


def _image(path: str, weight: float) -> dict[str, Any]:
    return {"kind": "image", "weight": weight, "data": _b64_file(path, "image"), "label": Path(path).name}


def term_spec(spec: str) -> dict[str, Any]:
    """``KIND[:WEIGHT]=VALUE`` -> a request term (files read here, sent as base64)."""
    m = _TERM.match(spec or "")
    if not m:
        raise QueryError(
            f"cannot read query term {spec!r}: write KIND=VALUE or KIND:WEIGHT=VALUE with KIND one of {_KINDS}"
        )
    kind, weight_text, value = m.group(1).lower(), m.group(2), m.group(3)
    weight = 1.0
    if weight_text:
        try:
            weight = float(weight_text)
        except ValueError:
            raise QueryError(f"the weight in {spec!r} is not a number") from None
    if not math.isfinite(weight) or weight == 0:
        raise QueryError(f"a term's weight must be a finite, non-zero number, got {weight!r}")
    if kind == "image":
        return _image(value.strip(), weight)
    if kind == "vector":
        path = value.strip()
        return {
            "kind": "vector",
            "weight": weight,
            "data": _b64_file(path, "vector"),
            "label": f"vector {Path(path).name}",
        }
    return {"kind": kind, "weight": weight, "value": value if kind == "text" else value.strip()}


def build_request(opts: dict[str, Any]) -> dict[str, Any]:
    """The search request of the command line's options: the positive terms (weight 1), then the
    negative ones, then the ``--term`` ones, in the order given (as
    :func:`indexer.search.query.terms_from_options`)."""
    terms: list[dict[str, Any]] = []
    if opts.get("text") is not None:
        terms.append({"kind": "text", "value": opts["text"]})
    terms += [{"kind": "text", "value": t} for t in opts.get("plus", ())]
    terms += [_image(p, 1.0) for p in opts.get("images", ())]
    terms += [{"kind": "id", "value": int(i)} for i in opts.get("ids", ())]
    terms += [{"kind": "text", "value": t, "weight": -1.0} for t in opts.get("minus", ())]
    terms += [_image(p, -1.0) for p in opts.get("minus_images", ())]
    terms += [{"kind": "id", "value": int(i), "weight": -1.0} for i in opts.get("minus_ids", ())]
    terms += [term_spec(t) for t in opts.get("terms", ())]
    group = opts.get("group")
    return {
        "terms": terms,
        "k": opts["k"],
        "offset": opts["offset"],
        "where": list(opts.get("where", ())),
        "taxon": list(opts.get("taxa", ())),
        "group": group,
        "group_similarity": opts.get("group_similarity", 0.95),
        "min_score": opts.get("min_score"),
    }


# -- transports ----------------------------------------------------------------------------


class DirectTransport:
    """The engine in this process (loads the model: seconds)."""

    def __init__(self, collection: str, device: str, *, log_queries: bool | str = False):
        self.collection = collection
        self.device = device
        self.log_queries = log_queries  # the engine's opt-in query log (SearchEngine(log_queries=...))
        self._engine: Any = None

    def engine(self) -> Any:
        if self._engine is None:
            from indexer.search.engine import SearchEngine

            self._engine = SearchEngine.open(
                self.collection, device=self.device, refresh_interval=None, log_queries=self.log_queries
            )
        return self._engine

    def search(self, request: dict[str, Any]) -> dict[str, Any]:
        from indexer.serve.config import Limits
        from indexer.serve.queries import parse_request, run_search

        return run_search(self.engine(), parse_request(request), Limits.local())

    def fields(self) -> list[tuple[str, str]]:
        return [(f, t) for f, t in self.engine().fields()]


class _ServerTransport:
    """A bioclip-serve server's answers to the same requests."""

    client: Any
    name: str

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        from indexer.serve.client import ApiAnswerError

        try:
            return self.client.request(method, self.client.collection_path(self.name) + path, body=body)
        except ApiAnswerError as exc:
            raise click.ClickException(exc.message) from None

    def search(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/search", request)

    def fields(self) -> list[tuple[str, str]]:
        return [(f["field"], f["type"]) for f in self._call("GET", "")["fields"]]


class RemoteTransport(_ServerTransport):
    """The server at ``--server URL`` (or ``$BIOCLIP_SEARCH_SERVER``); COLLECTION is the name it
    serves the collection under (a path stands for its folder's name)."""

    def __init__(self, url: str, collection: str):
        from indexer.serve.client import ApiClient

        try:
            self.client = ApiClient(url=url, api_key=os.environ.get(API_KEY_ENV) or None)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--server") from None
        self.name = os.path.basename(os.path.normpath(collection)) if os.sep in collection else collection


class LocalServerTransport(_ServerTransport):
    """The user's background server for the collection, started by the first query."""

    def __init__(self, collection: str, device: str):
        from indexer.serve.local import ensure_running, local_server

        self.server = local_server(collection)
        self.name = self.server.name

        def announce(ls: Any) -> None:
            from indexer.serve.local import idle_timeout

            click.echo(
                f"note: starting a background server for {ls.collection} (it stops after "
                f"{idle_timeout() / 60:g} idle minutes; bioclip-serve stop ends it, --no-server searches without)",
                err=True,
            )

        self.client = ensure_running(self.server, device, on_start=announce)


def is_collection(path: str) -> bool:
    """Cheap: the folder holds a collection manifest (``indexer.store.MANIFEST``)."""
    return os.path.isfile(os.path.join(path, "collection.json"))


def choose_transport(collection: str, *, server: str | None, no_server: bool, device: str) -> Any:
    """``--server``, then ``--no-server``, then the background server (when the collection exists:
    otherwise the engine says what is wrong)."""
    if server:
        return RemoteTransport(server, collection)
    if no_server or not is_collection(collection):
        return DirectTransport(collection, device)
    from indexer.serve.local import LocalServerError

    try:
        return LocalServerTransport(collection, device)
    except LocalServerError as exc:
        click.echo(f"note: no background server ({exc}); searching directly", err=True)
        return DirectTransport(collection, device)
