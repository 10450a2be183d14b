"""What every stage of a build shares: the writer and its tables, the options, the report."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.build.options import BuildOptions, BuildReport
from indexer.store import Writer

__all__ = ["BuildRun", "Committer", "progress_bar"]


class Committer:
    """Commits the writer's buffered changes every ``every`` changes or ``seconds`` seconds.

    ``pending_sha`` holds the vectors of content hashes added since the last commit (not yet
    visible in the writer's ``live`` table), so a copy of a file seen moments ago is reused too;
    ``hashes`` is the build's index of content hashes (see :mod:`indexer.build.encode`).
    """

    def __init__(self, writer: Writer, every: int, seconds: float):
        self.writer = writer
        self.every = every
        self.seconds = seconds
        self.last = time.monotonic()
        self.pending_sha: dict[str, np.ndarray] = {}
        self.hashes: Any = None

    def maybe_commit(self) -> None:
        if self.writer.pending >= self.every or (self.writer.pending and time.monotonic() - self.last >= self.seconds):
            self.commit()

    def commit(self) -> None:
        if self.writer.pending:
            self.writer.commit()
            self.pending_sha.clear()
        self.last = time.monotonic()


@dataclass(frozen=True)
class BuildRun:
    """One build in progress. ``con`` is the writer's DuckDB connection, holding its ``live`` and
    ``failed`` tables and the build's own ``scan`` and ``work`` tables; ``progress`` a tqdm bar or
    None. Every stage runs in the build's own thread (the writer is not thread-safe)."""

    con: Any
    writer: Writer
    options: BuildOptions
    report: BuildReport
    committer: Committer
    progress: Any = None

    def advance(self, n: int) -> None:
        if self.progress is not None and n:
            self.progress.update(n)
            self.progress.set_postfix(failed=self.report.failed, refresh=False)


def progress_bar(total: int, enabled: bool, desc: str = "indexing") -> Any:
    """A tqdm bar on stderr, or None when progress is not shown."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", dynamic_ncols=True, smoothing=0.05, desc=desc)
