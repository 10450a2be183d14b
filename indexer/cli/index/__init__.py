"""``bioclip-index``: build and inspect collections. One module per subcommand in this package.

Each module ``indexer/cli/index/NAME.py`` defines ``command`` (a :class:`click.Command`); the group
finds them itself, so a new subcommand is a new file here and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil

import click

from indexer.cli.common import CONTEXT

__all__ = ["main"]


@click.group(
    context_settings=CONTEXT,
    epilog="Example:\n\n\b\n  bioclip-index build ./photos --labels labels.csv --out ./photos.collection\n  bioclip-index info ./photos.collection",
)
@click.version_option(package_name="bioclip-search")
def main() -> None:
    """Build and inspect bioclip-search collections (image embeddings + metadata + ANN index)."""


for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    main.add_command(importlib.import_module(f"{__name__}.{_info.name}").command)
