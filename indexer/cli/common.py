"""What every console script shares: logging, named exceptions turned into messages, options.

The library raises named exceptions; here (and only here, with the app) they become one-line
messages and exit statuses: 1 for a refused or failed command, 2 for usage errors and for a
``bioclip`` package that is not bioclip-search's (see :mod:`indexer._coexist`), 130 for Ctrl-C,
143 for SIGTERM. SIGTERM (systemd, ``docker stop``, Kubernetes) is handled like Ctrl-C: it raises
:class:`Terminated`, a KeyboardInterrupt, where the command is, so a build commits the work in
progress and stops; a second SIGTERM ends the process at once.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

__all__ = [
    "CONTEXT",
    "Terminated",
    "setup_logging",
    "friendly",
    "parse_size",
    "verbosity",
    "device_option",
    "index_options",
    "kind_lines",
]

# Idle OpenMP threads of the encoder sleep instead of spinning, so on a machine with few cores they
# leave the CPU to the decode workers between batches (set before torch is first imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: Context settings of every command.
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.I)


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    from indexer._coexist import warn_if_pybioclip_installed

    warn_if_pybioclip_installed()


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM. A KeyboardInterrupt, so that everything that commits the work in
    progress on Ctrl-C does the same here; decode workers forked from the process inherit the
    handler and stop as quietly as on Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


def _catch_sigterm() -> Any:
    """Install the SIGTERM handler (main thread only); the previous handler, to restore."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _on_sigterm)


def friendly(fn: Callable | None = None, *, sigterm: bool = True) -> Callable:
    """Turn the library's named exceptions into one-line errors (exit status 1), never tracebacks;
    Ctrl-C (130) and SIGTERM (143) into a line saying that committed work is kept. ``@friendly(
    sigterm=False)`` leaves SIGTERM to the command (a server that shuts down gracefully on it)."""
    if fn is None:
        return functools.partial(friendly, sigterm=sigterm)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from bioclip.errors import BioclipError
        from indexer.errors import ForeignBioclipError, IndexerError

        previous = _catch_sigterm() if sigterm else None
        try:
            return fn(*args, **kwargs)
        except ForeignBioclipError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)
        except (IndexerError, BioclipError) as exc:
            raise click.ClickException(str(exc)) from None
        except Terminated:
            click.echo("stopped (SIGTERM); committed work is kept and the same command resumes it", err=True)
            sys.exit(143)
        except KeyboardInterrupt:
            click.echo("interrupted; committed work is kept and the same command resumes it", err=True)
            sys.exit(130)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def parse_size(value: str | None) -> int | None:
    """``600MB``, ``8GB``, ``1.5g`` -> bytes; None stays None."""
    if value is None:
        return None
    m = _SIZE.match(value)
    if not m:
        raise click.BadParameter(f"{value!r} is not a size like 600MB or 4GB")
    mult = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def verbosity(fn: Callable) -> Callable:
    """``-v/--verbose`` (repeatable) and ``-q/--quiet``."""
    fn = click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")(fn)
    fn = click.option("-q", "--quiet", is_flag=True, help="Only errors.")(fn)
    return fn


def device_option(fn: Callable) -> Callable:
    """``--device auto|cpu|cuda|mps``."""
    return click.option(
        "--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True
    )(fn)


def index_options(*, index_type_default: str = "size and memory budget") -> Callable[[Callable], Callable]:
    """The ANN index options of the commands that add to a collection (``build``, ``import``):
    ``--no-index``, ``--index-type``, ``--memory-budget``, ``--recall-target``, in that order.
    ``index_type_default`` says in ``--index-type``'s help what the index is chosen from."""
    options = [
        click.option("--no-index", is_flag=True, help="Store vectors only; build the ANN index later with reindex."),
        click.option(
            "--index-type",
            default=None,
            help=f"FAISS index factory string (default: chosen from {index_type_default}).",
        ),
        click.option("--memory-budget", default=None, help="Memory for the ANN index, e.g. 600MB, 8GB."),
        click.option("--recall-target", type=click.FloatRange(0.5, 1.0), default=0.95, show_default=True),
    ]

    def decorate(fn: Callable) -> Callable:
        for option in reversed(options):  # click lists options in the order their decorators are written
            fn = option(fn)
        return fn

    return decorate


def kind_lines(summary: Any) -> list[str]:
    """Indented lines of recall per query kind (``engine.info()["recall_detail"]`` or
    :func:`indexer.ann.info.kind_summary`), each saying which queries its figure was measured on."""
    from indexer.ann.info import kind_rows

    out = []
    for r in kind_rows(summary):
        out.append(f"  {r['kind']:6s} recall {r['recall']}; parameters: {r['params']}")
        out.append(f"         measured on: {r['queries']}")
        if r["note"]:
            out.append(f"         {r['note']}")
    return out
