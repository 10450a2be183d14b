"""``bioclip-serve``: the JSON HTTP API over one or more collections, and the user's background
servers (``bioclip-serve status``, ``bioclip-serve stop``)."""

from __future__ import annotations

import json
import sys
import time

import click

from indexer.cli.common import CONTEXT, device_option, friendly, setup_logging, verbosity

__all__ = ["main"]

_EPILOG = """Examples:

\b
  bioclip-serve ./photos.collection                          # http://127.0.0.1:8000/docs
  bioclip-serve herbarium=/data/herbarium.collection insects=/data/insects.collection --port 8080
  bioclip-serve ./photos.collection --host 0.0.0.0 --workers 4 --api-key-file /etc/bioclip/keys
  bioclip-serve ./photos.collection --cors-origin https://portal.example.org
  bioclip-serve ./photos.collection --uds /run/bioclip/api.sock     # behind nginx on a Unix socket
  bioclip-serve status                                       # the background servers bioclip-search started
  bioclip-serve stop                                         # stop them (or: stop COLLECTION)

\b
Endpoints (see /docs): /v1/collections, /v1/collections/NAME, .../search (GET ?q=, POST JSON or
an upload in the field 'image'), .../images/ID, .../images/ID/similar, .../images/ID/thumbnail,
.../images/ID/file, .../taxa?prefix=, .../facets?field=, /healthz, /readyz."""


class _DefaultRun(click.Group):
    """``bioclip-serve COLLECTION...`` means ``bioclip-serve run COLLECTION...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultRun, context_settings=CONTEXT, epilog=_EPILOG)
def main() -> None:
    """Serve collections as a JSON HTTP API (OpenAPI at /openapi.json, docs at /docs), or manage
    the background servers that keep bioclip-search warm."""


@main.command("run", context_settings=CONTEXT, epilog=_EPILOG)
@click.argument("collections", nargs=-1, required=True, metavar="[NAME=]COLLECTION...")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--uds", metavar="PATH", help="Listen on this Unix socket instead (mode 0660).")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True, help="Worker processes.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="FAISS/torch threads per worker.")
@click.option("--api-key-file", type=click.Path(dir_okay=False), help="Require one of these keys (one a line).")
@click.option(
    "--cors-origin", "cors", multiple=True, metavar="ORIGIN", help="Allow browsers on this origin (repeatable)."
)
@click.option("--max-upload-mb", type=click.FloatRange(0.01), default=20.0, show_default=True)
@click.option("--max-k", type=click.IntRange(1, 10000), default=100, show_default=True, help="Most results a page.")
@click.option(
    "--rate-limit",
    default="600/minute",
    show_default=True,
    help="Requests per client and worker ('10/second;600/minute'; 'none' for no limit).",
)
@click.option(
    "--forwarded-allow-ips", default=None, help="Proxies whose X-Forwarded-For is trusted (default 127.0.0.1)."
)
@click.option("--root-path", default="", metavar="PREFIX", help="The path prefix a reverse proxy serves the API under.")
@click.option("--show-paths", is_flag=True, help="Include local file paths in answers (a private server only).")
@click.option("--no-access-log", is_flag=True, help="No line per request on stderr.")
@click.option("--idle-timeout", type=click.FloatRange(min=0.1), default=None, help="Stop after this many idle seconds.")
@click.option("--background", "state_file", default=None, hidden=True)
@device_option
@verbosity
@friendly(sigterm=False)  # uvicorn shuts down gracefully on SIGTERM itself
def run(**opts) -> None:
    """Serve COLLECTION(s) over HTTP; NAME=COLLECTION names one in the URLs (default: its folder's name)."""
    setup_logging(opts["verbose"], opts["quiet"])
    from indexer.serve.config import Limits, ServeConfig, ServeConfigError, default_threads, parse_collections
    from indexer.serve.guards import setup_worker_logging
    from indexer.serve.runner import Listen, serve

    setup_worker_logging(force=True, quiet=opts["quiet"])
    from indexer.store import Collection

    collections = parse_collections(opts["collections"])
    for _, path in collections:
        Collection.open(path)  # a missing or newer collection: a message now, not in a worker
    background = opts["state_file"] is not None
    rate = None if opts["rate_limit"].strip().lower() in ("none", "off", "0") else opts["rate_limit"]
    if rate:
        _check_rate(rate)
    limits = (
        Limits.local()
        if background
        else Limits(max_upload_bytes=int(opts["max_upload_mb"] * 1024 * 1024), max_k=opts["max_k"], rate=rate)
    )
    workers = opts["workers"]
    if opts["idle_timeout"] and workers > 1:
        raise ServeConfigError("--idle-timeout needs a single worker")
    config = ServeConfig(
        collections=collections,
        device=opts["device"],
        threads=opts["threads"] or default_threads(workers),
        workers=workers,
        limits=limits,
        api_key_file=opts["api_key_file"],
        cors_origins=tuple(opts["cors"]),
        show_paths=background or opts["show_paths"],
        idle_timeout=opts["idle_timeout"],
        state_file=opts["state_file"],
        access_log=not opts["no_access_log"],
    )
    if opts["api_key_file"]:
        from indexer.serve.config import read_api_keys

        read_api_keys(opts["api_key_file"])  # a bad key file: a message now
    if opts["host"] not in ("127.0.0.1", "localhost", "::1") and not opts["uds"] and not opts["api_key_file"]:
        click.echo(f"note: listening on {opts['host']} without API keys: anyone who reaches it can search", err=True)
    listen = Listen(
        host=opts["host"],
        port=opts["port"],
        uds=opts["uds"],
        uds_mode=0o600 if background else 0o660,
        forwarded_allow_ips=opts["forwarded_allow_ips"],
        graceful_timeout=5 if background else 30,
        root_path=opts["root_path"].rstrip("/"),
    )
    names = ", ".join(n for n, _ in collections)
    click.echo(f"bioclip-serve: {names} on {listen.describe()} (docs at /docs; Ctrl-C to stop)", err=True)
    sys.exit(serve(config, listen))


def _check_rate(rate: str) -> None:
    from limits import parse_many

    try:
        parse_many(rate)
    except ValueError:
        raise click.BadParameter(f"{rate!r} is not a rate like 600/minute or 10/second;600/minute") from None


@main.command("status", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly
def status(*, as_json) -> None:
    """The background servers that bioclip-search started for you, and what they hold."""
    from indexer.serve.local import runtime_dir, servers

    found = servers()
    if as_json:
        click.echo(json.dumps(found, indent=2, default=str))
        return
    if not found:
        click.echo(f"no background server is running (folder: {runtime_dir()})")
        return
    for s in found:
        st = s.get("status") or {}
        if not s["alive"]:
            click.echo(f"{s.get('collection')}: not running (stale record {s['state_file']})")
            continue
        idle = st.get("idle_s")
        timeout = s.get("idle_timeout")
        left = f", stops in {max(0, timeout - idle) / 60:.0f} min unless used" if idle is not None and timeout else ""
        up = time.time() - float(s.get("started") or time.time())
        mem = f", {s['rss_mib']:.0f} MiB" if s.get("rss_mib") else ""
        click.echo(
            f"{s.get('collection')}: {st.get('status', '?')}, pid {s.get('pid')}, up {up / 60:.1f} min, "
            f"{st.get('requests', '?')} requests{mem}{left}\n    socket {s.get('socket')}"
        )


@main.command("stop", context_settings=CONTEXT)
@click.argument("collections", nargs=-1, type=click.Path())
@friendly
def stop(*, collections) -> None:
    """Stop the background server of COLLECTION(s), or all of yours."""
    import os

    from indexer.serve.local import servers
    from indexer.serve.local import stop as stop_one

    wanted = {os.path.realpath(c) for c in collections}
    found = [s for s in servers() if not wanted or s.get("collection") in wanted]
    if not found:
        click.echo("no background server to stop" + (" for " + ", ".join(collections) if collections else ""))
        return
    for s in found:
        was = stop_one(s)
        click.echo(f"{'stopped' if was else 'cleaned up the record of'} the server for {s.get('collection')}")


if __name__ == "__main__":  # the background servers run as ``python -m indexer.cli.serve``
    main()
