"""The build: images -> collection (scan -> diff -> work -> encode -> commit, then the ANN index).

Public surface::

    from indexer.build import BuildOptions, build, open_source
    report = build("photos.collection", [open_source("photos/")], model_name="bioclip")

Modules: ``runner`` (:func:`build`, joining the stages), ``options`` (:class:`BuildOptions`,
:class:`BuildReport`), ``target`` (the collection and model to build into, locked), the stages
``scan``, ``diff``, ``work``, ``encode``, ``commit``, the per-item work ``item``, the executors
``executor`` (interface and choice), ``local`` and ``ray``, the ``download`` er for remote media,
and ``sources`` (what ``bioclip-index build SOURCE...`` reads). See docs/ARCHITECTURE.md.
"""

from indexer.build.options import TRANSIENT_REASONS, BuildOptions, BuildReport
from indexer.build.runner import build
from indexer.build.sources import open_source

__all__ = ["BuildOptions", "BuildReport", "TRANSIENT_REASONS", "build", "open_source"]
