"""Curation: find likely misidentifications, suggest names for unidentified material, group
duplicates, find outliers, and measure how far to trust it all (docs/CURATION.md).

Public surface::

    from indexer.curate import curate, Curation, ListOptions, CurateOptions, evaluate
    curate("museum.collection")                   # derived data in museum.collection/curation/
    cur = Curation.open("museum.collection")
    cur.entries("misidentified")                  # list of Entry, best first

Modules: ``options`` (defaults), ``store`` (the ``curation/`` folder), ``labels`` (zero-shot over the
collection's taxa, pybioclip's method from :mod:`bioclip`), ``compute`` (:func:`curate`, full or
incremental), ``evidence`` (labels, votes, predictions as codes), ``lists`` (the four lists),
``decisions`` (accept / reject), ``curation`` (:class:`Curation`), ``export`` (CSV, Darwin Core),
``evaluate`` (accuracy and calibration).
"""

from indexer.curate.compute import CurateReport, curate
from indexer.curate.curation import Curation
from indexer.curate.decisions import Decision, Decisions
from indexer.curate.evaluate import Evaluation, evaluate
from indexer.curate.lists import Entry
from indexer.curate.options import DUPLICATE_COSINE, KINDS, CurateOptions, ListOptions

__all__ = [
    "DUPLICATE_COSINE",
    "KINDS",
    "CurateOptions",
    "CurateReport",
    "Curation",
    "Decision",
    "Decisions",
    "Entry",
    "Evaluation",
    "ListOptions",
    "curate",
    "evaluate",
]
