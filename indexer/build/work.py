"""Stage 3, work: what is to be decoded and encoded, piece by piece, remote media downloaded first.

Rows whose metadata alone changed get superseding metadata rows here, keeping their ids and stored
vectors (:func:`update_metadata_only`). The rest (``new`` and ``changed``) come out of :class:`WorkList`
as :class:`WorkPiece` s: a table of ``work`` rows, the rows to process, and the downloaded file of
each remote row. Remote media are downloaded one piece ahead, in a background thread, while the
executor decodes and encodes the piece before; download failures are recorded here and their rows
left out. Both executors are fed by this one loop.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from indexer.build.commit import Failure, record_item_failures
from indexer.build.context import BuildRun
from indexer.build.scan import SCAN_META
from indexer.errors import FetchError
from indexer.locations import REMOTE_URL_RE, is_remote

__all__ = ["WorkPiece", "WorkList", "update_metadata_only", "image_rows", "TO_ENCODE"]

log = logging.getLogger(__name__)

#: The ``work`` rows that are decoded and encoded.
TO_ENCODE = "action IN ('new', 'changed')"
_CHUNK_ROWS = 20_000
_REMOTE_PIECE = 1024


@dataclass(frozen=True)
class WorkPiece:
    """Rows of the ``work`` table to process: ``todo`` are row positions in ``table`` (remote rows
    whose download failed are not among them); ``read_from`` maps a remote row to its downloaded file."""

    table: pa.Table
    todo: list[int]
    read_from: dict[int, str] = field(default_factory=dict)


def row_tables(con, where: str, params: Sequence = ()) -> Iterable[pa.Table]:
    """The ``work`` rows matching ``where``, in key order, in chunks of ``_CHUNK_ROWS``."""
    total = con.execute(f"SELECT count(*) FROM work WHERE {where}", list(params)).fetchall()[0][0]
    for offset in range(0, total, _CHUNK_ROWS):
        yield con.sql(
            f"SELECT * FROM work WHERE {where} ORDER BY key LIMIT {_CHUNK_ROWS} OFFSET {offset}", params=list(params)
        ).to_arrow_table()


def image_rows(chunk: pa.Table, extra: dict[str, Any] | None = None) -> pa.Table:
    """Columns of ``chunk`` that go into the collection (metadata + identity)."""
    keep = ["key", "source", "location", "size", "mtime", "meta_hash", *SCAN_META]
    table = chunk.select([c for c in keep if c in chunk.column_names])
    for name, values in (extra or {}).items():
        table = table.append_column(name, values)
    return table


def update_metadata_only(run: BuildRun) -> None:
    """Give rows whose metadata alone changed their new metadata under the same ids (the image's
    id, vector and index entry stay; nothing is encoded)."""
    con, writer, report, committer = run.con, run.writer, run.report, run.committer
    for chunk in row_tables(con, "action = 'metadata'"):
        writer.update(image_rows(chunk), chunk.column("old_id").to_numpy())
        report.metadata_updated += chunk.num_rows
        committer.maybe_commit()


def _pieces(chunk: pa.Table) -> Iterator[pa.Table]:
    """A chunk as it is, or in pieces of ``_REMOTE_PIECE`` rows when it holds URLs to download."""
    import pyarrow.compute as pc

    has_remote = (
        pc.any(pc.match_substring_regex(chunk.column("location"), REMOTE_URL_RE)).as_py() if chunk.num_rows else False
    )
    if not has_remote:
        yield chunk
        return
    for start in range(0, chunk.num_rows, _REMOTE_PIECE):
        yield chunk.slice(start, _REMOTE_PIECE)


def _download(
    downloader: Any, chunk: pa.Table, remote: list[int]
) -> tuple[dict[int, str], list[Failure], dict[int, str]]:
    """Download the remote items of ``chunk`` (bounded concurrency, cached). A row whose URL fails
    and that has ``alt_locations`` (other URLs of the same image) tries them in order.

    Runs in the download thread: touches neither the writer nor the report. Returns
    (row index -> downloaded file, failures as (row index, stage, reason, detail), row index -> the
    alternative URL its file came from).
    """
    locations = chunk.column("location").to_pylist()
    alts = (
        chunk.column("alt_locations").to_pylist() if "alt_locations" in chunk.column_names else [None] * len(locations)
    )
    todo = {i: locations[i] for i in remote}
    others = {
        i: list(dict.fromkeys(u for u in (alts[i] or "").splitlines() if u.strip() and u != locations[i]))
        for i in remote
    }
    out: dict[int, str] = {}
    first_failure: dict[int, Failure] = {}
    relocated: dict[int, str] = {}
    while todo:
        by_url: dict[str, list[int]] = collections.defaultdict(list)
        for i, url in todo.items():
            by_url[url].append(i)
        todo = {}
        for url, result in downloader.fetch_many(list(by_url)):
            for i in by_url[url]:
                if not isinstance(result, FetchError):
                    out[i] = result
                    if url != locations[i]:
                        relocated[i] = url
                    continue
                first_failure.setdefault(i, (i, result.stage, result.reason, result.detail))
                if others[i] and is_remote(others[i][0]):
                    todo[i] = others[i].pop(0)
    return out, [f for i, f in first_failure.items() if i not in out], relocated


def _relocate(piece: pa.Table, relocated: dict[int, str]) -> pa.Table:
    """``piece`` with the ``location`` of some rows replaced: the alternative URL their image came
    from (their key and published ``mediaURL`` stay the first URL's)."""
    locations = piece.column("location").to_pylist()
    for i, url in relocated.items():
        log.info("%s failed; its image was read from the alternative %s", locations[i], url)
        locations[i] = url
    return piece.set_column(piece.column_names.index("location"), "location", pa.array(locations, pa.string()))


class WorkList:
    """The pieces of work of a build, in key order (see the module docstring). Iterate once, in the
    build's thread; the download thread touches neither the writer nor the report."""

    def __init__(self, run: BuildRun, cache_dir: str | os.PathLike):
        self.run = run
        self.cache_dir = os.fspath(cache_dir)
        self._downloader: Any = None

    def count(self) -> int:
        return self.run.con.execute(f"SELECT count(*) FROM work WHERE {TO_ENCODE}").fetchall()[0][0]

    def __iter__(self) -> Generator[WorkPiece, None, None]:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="download")
        pending: tuple[pa.Table, list[int], Future | None] | None = None
        try:
            for chunk in row_tables(self.run.con, TO_ENCODE):
                for piece in _pieces(chunk):
                    locations = piece.column("location").to_pylist()
                    remote = sorted(i for i, loc in enumerate(locations) if is_remote(loc))
                    future = pool.submit(_download, self._make_downloader(), piece, remote) if remote else None
                    if pending is not None:
                        yield self._finish(*pending)
                    pending = (piece, remote, future)
            if pending is not None:
                yield self._finish(*pending)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if self._downloader is not None:
                self._downloader.close()

    def _make_downloader(self) -> Any:
        if self._downloader is None:
            from indexer.build.download import DownloadConfig, Downloader

            os.makedirs(self.cache_dir, exist_ok=True)
            self._downloader = Downloader(DownloadConfig(cache_dir=self.cache_dir))
        return self._downloader

    def _finish(self, piece: pa.Table, remote: list[int], future: Future | None) -> WorkPiece:
        local_paths: dict[int, str] = {}
        if future is not None:
            local_paths, failures, relocated = future.result()
            if failures:
                record_item_failures(self.run, piece, failures)
                self.run.advance(len(failures))
            if relocated:
                piece = _relocate(piece, relocated)
                self.run.report.alternative_locations += len(relocated)
        remote_set = set(remote)
        todo = [i for i in range(piece.num_rows) if i not in remote_set or i in local_paths]
        return WorkPiece(piece, todo, local_paths)
