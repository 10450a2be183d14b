"""Living beside pybioclip: the model authors' package installs an import package named ``bioclip``
too, and whichever was installed last owns the files. bioclip-search keeps its ``bioclip`` (its own
model layer), so the two cannot share one environment; when the ``bioclip`` Python finds is not
ours, importing :mod:`indexer` fails at once with a message that names pybioclip and says what to do.

The check reads the found package's ``__init__.py`` for our marker (``__bioclip_search__``) rather
than importing it: a foreign ``bioclip`` may import torch, or fail, on import.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import sys

from indexer.errors import ForeignBioclipError

__all__ = ["check_bioclip_package", "warn_if_pybioclip_installed", "MARKER", "SCRIPTS"]

log = logging.getLogger("indexer")

#: The name our ``bioclip/__init__.py`` sets (to True).
MARKER = "__bioclip_search__"
#: Our console scripts: run as one of them, a foreign ``bioclip`` is one line and exit status 2.
SCRIPTS = frozenset({"bioclip-index", "bioclip-search", "bioclip-app", "bioclip-demo", "bioclip-serve"})


def _foreign_origin() -> str | None:
    """Where the ``bioclip`` package Python would import lives, when it is not ours; else None."""
    module = sys.modules.get("bioclip")
    if module is not None:
        return None if getattr(module, MARKER, False) else str(getattr(module, "__file__", None) or module)
    try:
        spec = importlib.util.find_spec("bioclip")
    except (ImportError, ValueError):  # pragma: no cover - a broken path entry
        return None
    if spec is None:
        return None  # no bioclip at all: the first real use says so
    origin = spec.origin
    if not origin or not origin.endswith(".py"):
        return origin or "a namespace package"
    try:
        with open(origin, encoding="utf-8", errors="replace") as fh:
            source = fh.read(20_000)
    except OSError:
        return None
    return None if f"{MARKER} = True" in source else origin


def _message(origin: str) -> str:
    return (
        f"The 'bioclip' package Python finds is not bioclip-search's: it is at {origin}, most likely "
        "pybioclip's (the BioCLIP authors' package, distribution 'pybioclip'), which installs an import "
        "package of the same name. Both cannot live in one environment (installing one overwrites the "
        "other's files). Install bioclip-search in its own virtual environment: "
        "python3 -m venv ~/.venvs/bioclip-search, activate it (. ~/.venvs/bioclip-search/bin/activate) and "
        "install bioclip-search there (pip install -e . in its folder); or run 'pip uninstall pybioclip' "
        "and then reinstall bioclip-search."
    )


def check_bioclip_package() -> None:
    """Raise ForeignBioclipError when ``bioclip`` is not ours; run as one of our console scripts,
    print the message as one line and exit with status 2 instead (no traceback)."""
    origin = _foreign_origin()
    if origin is None:
        return
    message = _message(origin)
    script = os.path.basename(getattr(sys, "argv", [""])[0] or "")
    if script in SCRIPTS:
        sys.stderr.write(f"{script}: error: {message}\n")
        raise SystemExit(2)
    raise ForeignBioclipError(message)


@functools.lru_cache(maxsize=1)
def warn_if_pybioclip_installed() -> bool:
    """Warn (once) when the pybioclip distribution is installed in this environment although our
    ``bioclip`` won: the next install of either overwrites the other. Returns whether it warned."""
    from importlib import metadata

    try:
        metadata.distribution("pybioclip")
    except metadata.PackageNotFoundError:
        return False
    log.warning(
        "pybioclip is installed in this environment too and shares the import name 'bioclip' with "
        "bioclip-search: reinstalling either overwrites the other. Give bioclip-search its own "
        "virtual environment (python3 -m venv ~/.venvs/bioclip-search)."
    )
    return True
