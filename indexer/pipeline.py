"""The build runner: scan -> diff -> fetch + decode + preprocess (workers) -> encode -> commit -> index.

One function, :func:`build`, joins the stages:

1. **scan** every source into a staging table (DuckDB, in the writer's own in-memory database);
2. **diff** it against the live images: unchanged rows are skipped, rows whose metadata alone
   changed are re-committed with their stored vector, new and changed files are fetched;
3. **fetch/decode/preprocess** in worker processes (a torch DataLoader: bounded prefetch, pinned
   memory on CUDA), one failure per bad item, never an exception out of a worker;
4. **encode** in batches in this process, reusing a stored vector when the file's content hash is
   already indexed (a renamed or copied file);
5. **commit** every ``commit_every`` images or ``commit_seconds`` seconds (a crash loses at most one
   unit of work, never committed work), and finally
6. **index**: bring the ANN index up to date from the stored vectors.

Nothing here prints: progress goes through tqdm (when enabled), everything else through logging.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from indexer.errors import ItemError
from indexer.locations import REMOTE_URL_RE, is_remote, kind_sql
from indexer.sources.base import Source
from indexer.store import Collection, Writer, is_collection
from indexer.store.model import check_loaded_model, check_model_compatible, load_collection_model
from indexer.store.schema import METADATA_COLUMNS, quote_ident

__all__ = [
    "BuildOptions",
    "BuildReport",
    "build",
    "open_or_create",
    "TRANSIENT_REASONS",
]

log = logging.getLogger(__name__)

#: Failure reasons worth retrying on the next run without any change to the item.
TRANSIENT_REASONS = frozenset(
    {
        "timeout",
        "connection-error",
        "host-unreachable",
        "http-429",
        "http-500",
        "http-502",
        "http-503",
        "http-504",
        "worker-crashed",
    }
)

_SCAN_META = list(METADATA_COLUMNS)
_CHUNK_ROWS = 20_000


@dataclass(frozen=True)
class BuildOptions:
    """How a build runs. Defaults suit a laptop; the CLI exposes each one."""

    batch_size: int | None = None  # None: default_batch_size(model): 8 on CPU, sized from free memory on GPU
    workers: int | None = None  # decode worker processes; None: sized from the cores
    commit_every: int = 2048  # images per commit unit
    commit_seconds: float = 60.0  # or this many seconds, whichever comes first
    max_pixels: int | None = None  # None: indexer.decode.DEFAULT_MAX_PIXELS
    max_bytes: int = 512 * 1024 * 1024  # a file larger than this is a failure
    prune: bool = False  # retire images whose files are gone from the sources
    retry_failed: bool = False  # retry every recorded failure, not only transient ones
    rehash: bool = False  # read every unchanged-looking local file: a new content hash means changed
    build_index: bool = True
    index_factory: str | None = None
    memory_budget: int | None = None
    recall_target: float = 0.95
    cache_dir: str | None = None  # downloaded media; default COLLECTION/cache/media
    progress: bool = False
    executor: str = "local"  # "local" (decode workers + this process's model) or "ray" (Ray Data)
    ray_address: str | None = None  # an existing Ray cluster ("auto", "ray://host:10001"); None: start one


@dataclass
class BuildReport:
    """What a build did. ``failed_by_reason`` counts failures found in this run."""

    collection: str
    scanned: int = 0
    unchanged: int = 0
    encoded: int = 0
    reused: int = 0  # new or changed images whose content was already indexed (hash match)
    metadata_updated: int = 0
    replaced: int = 0  # old vectors retired because their file changed
    replaced_by_failure: int = 0  # old vectors retired because their changed file no longer reads
    pruned: int = 0
    pruned_failures: int = 0  # recorded failures cleared because their file is gone
    rehashed: int = 0  # files read to compare content hashes (--rehash)
    skipped_failed: int = 0  # known failures not retried
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0  # rows whose key appeared earlier in the scan
    seconds: float = 0.0
    encode_seconds: float = 0.0
    generation: int = 0
    images: int = 0
    index: dict | None = None
    source_reports: dict[str, dict] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(self.failed_by_reason.values())

    @property
    def images_per_second(self) -> float:
        done = self.encoded + self.reused
        return done / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["failed"] = self.failed
        d["images_per_second"] = round(self.images_per_second, 3)
        return d


# ---------------------------------------------------------------------------------------------
# model <-> collection


def open_or_create(
    path: str | os.PathLike,
    *,
    model_name: str | None,
    revision: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    preprocess: str | None = None,
    model: Any = None,
):
    """Open the collection at ``path`` (checking the model) or create it; return (collection, model)."""
    from bioclip import load_model

    if is_collection(path):
        collection = Collection.open(path)
        if model is not None:
            check_loaded_model(collection, model)
        else:
            check_model_compatible(collection, model_name, revision)
            model = load_collection_model(collection, device=device, precision=precision)
        return collection, model
    if model is None:
        model = load_model(
            model_name or "bioclip", device=device, precision=precision, preprocess=preprocess, revision=revision
        )
    info = model.describe()
    collection = Collection.create(path, info, dimension=model.dimension)
    return collection, model


# ---------------------------------------------------------------------------------------------
# work items (run in decode worker processes)


class _ItemDataset:
    """Map-style dataset over one chunk of work: index -> preprocessed tensor or a failure record.

    Runs in worker processes: it must never raise (a raised exception would end the whole
    DataLoader), so every problem becomes a record with ``reason``.
    """

    def __init__(self, locations: list[str], transform, min_size, max_pixels, max_bytes, local_paths: dict[int, str]):
        self.locations = locations
        self.transform = transform
        self.min_size = min_size
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.local_paths = local_paths  # index -> downloaded file for remote items

    def __len__(self) -> int:
        return len(self.locations)

    def __getitem__(self, i: int) -> dict:
        return process_item(
            i,
            self.local_paths.get(i, self.locations[i]),
            self.locations[i],
            self.transform,
            self.min_size,
            self.max_pixels,
            self.max_bytes,
        )


def process_item(i: int, read_from: str, location: str, transform, min_size, max_pixels, max_bytes) -> dict:
    """Read, hash, decode and preprocess one image; never raises.

    Returns ``{"i", "tensor", "sha256", "width", "height"}`` or, for a failure,
    ``{"i", "tensor": None, "stage", "reason", "detail"}``. ``read_from`` is a local path or tar
    member (a downloaded file for remote items); ``location`` is what failures and logs name.
    """
    from indexer.decode import decode_image
    from indexer.fetch import read_location

    rec: dict[str, Any] = {"i": i, "tensor": None}
    try:
        data = read_location(read_from, max_bytes=max_bytes)
        rec["sha256"] = hashlib.sha256(data).hexdigest()
        kwargs = {"min_size": min_size}
        if max_pixels is not None:
            kwargs["max_pixels"] = max_pixels
        decoded = decode_image(data, name=location, **kwargs)
        del data
        rec["width"], rec["height"] = decoded.width, decoded.height
        rec["tensor"] = transform(decoded.image)
    except ItemError as exc:
        rec.update(stage=exc.stage, reason=exc.reason, detail=exc.detail)
    except MemoryError:
        rec.update(stage="decode", reason="out-of-memory", detail="not enough memory to decode")
    except Exception as exc:  # a bug or an exotic failure: record it, never kill the run
        rec.update(stage="preprocess", reason="error", detail=f"{type(exc).__name__}: {exc}")
    return rec


def _collate(records: list[dict]):
    import torch

    ok = [r for r in records if r["tensor"] is not None]
    batch = torch.stack([r.pop("tensor") for r in ok]) if ok else None
    for r in records:
        r.pop("tensor", None)
    return batch, ok, [r for r in records if "reason" in r]


def _worker_init(_worker_id: int) -> None:
    import torch

    # One thread per decode worker: the cores belong to the encoder and the other workers.
    torch.set_num_threads(1)


def default_batch_size(model) -> int:
    """Images per forward pass when the user gives none.

    CPU: 8, measured fastest per image for ViT-B/16 on a 2-core x86 (a batch of 32 ran 2.2x slower per
    image: its activations no longer fit in cache). CUDA: a probe forward of 16 images measures the
    memory one image takes under this precision, and the batch is the largest power of two that fits
    in 60% of the free memory, between 32 and 1024 (256 if the probe fails).
    """
    if not str(model.device).startswith("cuda"):
        return 8
    try:
        import torch

        size = model.preprocess_config.size
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        model.encode_image_tensors(torch.zeros(16, 3, size, size))
        per_image = max(1, (torch.cuda.max_memory_allocated() - base) / 16)
        free, _total = torch.cuda.mem_get_info()
        fit = int(0.6 * free / per_image)
        batch = 1 << max(5, min(10, fit.bit_length() - 1))
        log.info("batch size %d (%.1f MB per image, %.1f GB free)", batch, per_image / 1e6, free / 1e9)
        return batch
    except Exception as exc:  # never let a probe stop a build
        log.warning("could not size the batch from GPU memory (%s); using 256", exc)
        return 256


def _plan_threads(device: str, workers: int | None) -> tuple[int, int]:
    """(decode workers, torch threads in this process)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.startswith("cuda"):
        return (workers if workers is not None else max(1, min(16, cores - 1))), max(1, min(4, cores))
    # On CPU the encoder is the bottleneck: it gets every core, and one decode worker (mostly
    # idle, waiting on a full prefetch queue) overlaps decoding with encoding.
    return (workers if workers is not None else (1 if cores <= 4 else max(1, cores // 4))), cores


# ---------------------------------------------------------------------------------------------
# the runner


class _Committer:
    """Buffers results into the writer and commits by size or time."""

    def __init__(self, writer: Writer, every: int, seconds: float):
        self.writer = writer
        self.every = every
        self.seconds = seconds
        self.last = time.monotonic()
        self.pending_sha: dict[str, np.ndarray] = {}
        self.hashes: _HashIndex | None = None

    def maybe_commit(self) -> None:
        if self.writer.pending >= self.every or (self.writer.pending and time.monotonic() - self.last >= self.seconds):
            self.commit()

    def commit(self) -> None:
        if self.writer.pending:
            self.writer.commit()
            self.pending_sha.clear()
        self.last = time.monotonic()


def build(
    collection_path: str | os.PathLike,
    sources: Sequence[Source],
    *,
    model_name: str | None = None,
    revision: str | None = None,
    model: Any = None,
    device: str = "auto",
    precision: str = "auto",
    preprocess: str | None = None,
    options: BuildOptions = BuildOptions(),
) -> BuildReport:
    """Index ``sources`` into the collection at ``collection_path`` (created if needed).

    Resumable and incremental: run it again with the same arguments and only what is not yet
    committed (new, changed, or failed for a transient reason) is processed. Raises
    CollectionLockedError at once if another writer is active, ModelMismatchError if the
    collection was built with another model, SourceError if a source cannot be read at all.
    """
    started = time.monotonic()
    # An existing collection is locked before the model loads (which can take a while), so that a
    # second indexer is refused at once.
    early = Collection.open(collection_path).writer() if is_collection(collection_path) else None
    try:
        collection, model = open_or_create(
            collection_path,
            model_name=model_name,
            revision=revision,
            device=device,
            precision=precision,
            preprocess=preprocess,
            model=model,
        )
        writer = early if early is not None else collection.writer()
    except BaseException:
        if early is not None:
            early.close()
        raise
    report = BuildReport(collection=str(collection.path))
    with writer:
        con = writer.con
        _stage(con, sources, report)
        _classify(con, writer, sources, options, report)
        committer = _Committer(writer, options.commit_every, options.commit_seconds)
        try:
            _update_metadata_only(con, writer, report, committer)
            _process_fetch(con, writer, model, options, report, committer, collection, device)
        finally:
            # Whatever happens (Ctrl-C included), what is done is committed.
            committer.commit()
        if options.build_index:
            from indexer.ann import update_index

            report.index = update_index(
                writer,
                factory=options.index_factory,
                memory_budget=options.memory_budget,
                recall_target=options.recall_target,
            )
        report.seconds = time.monotonic() - started
        known = dict(writer.generation.stats.get("sources") or {})
        known.update(_source_roots(con, sources))
        writer.commit(stats={"last_build": _summary_stats(report), "sources": known})
        report.generation = writer.generation.number
        report.images = writer.generation.images
    report.seconds = time.monotonic() - started
    log.info(
        "indexed %d (reused %d, metadata updated %d), unchanged %d, failed %d in %.1fs",
        report.encoded,
        report.reused,
        report.metadata_updated,
        report.unchanged,
        report.failed,
        report.seconds,
    )
    return report


def _summary_stats(report: BuildReport) -> dict:
    return {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "scanned": report.scanned,
        "encoded": report.encoded,
        "reused": report.reused,
        "failed": report.failed,
        "seconds": round(report.seconds, 3),
    }


def _source_roots(con, sources: Sequence[Source]) -> dict[str, dict]:
    """Where each source's local files live: the folders the app may serve images from.

    A folder source's root; a ``--media-root`` directory; otherwise the fewest folders that hold
    every local file the source lists (never wider than needed: the app shows nothing outside).
    """
    out: dict[str, dict] = {}
    for src in sources:
        roots: list[str] = []
        for attr in ("root",):
            value = getattr(src, attr, None)
            if isinstance(value, (str, os.PathLike)):
                roots.append(os.path.abspath(os.fspath(value)))
        media = getattr(src, "roots", None)
        if isinstance(media, dict):
            roots += [os.path.abspath(os.fspath(d)) for d in media.values()]
        dirs = [
            d
            for (d,) in con.execute(
                "SELECT DISTINCT regexp_replace(location, '/[^/]*$', '') FROM scan "
                "WHERE source = ? AND starts_with(location, '/')",
                [src.name],
            ).fetchall()
        ]
        dirs = [d for d in dirs if d and not any(_within(d, r) for r in roots)]
        extra = _minimal_ancestors(dirs)
        if len(extra) > 256:
            extra = [os.path.commonpath(extra)]
        out[src.name] = {"type": type(src).__name__, "root": sorted(set(roots + extra))}
    return out


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _minimal_ancestors(dirs: list[str]) -> list[str]:
    out: list[str] = []
    for d in sorted(set(dirs)):
        if not out or not _within(d, out[-1]):
            out.append(d)
    return out


# -- 1. scan ------------------------------------------------------------------------------------


def _stage(con, sources: Sequence[Source], report: BuildReport) -> None:
    """Load every source's rows into the table ``scan`` (first occurrence of a key wins)."""
    meta_cols = ", ".join(f"{quote_ident(c)} VARCHAR" for c in _SCAN_META)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE scan_raw (seq BIGINT, source VARCHAR, key VARCHAR, location VARCHAR, "
        f"size BIGINT, mtime DOUBLE, error_reason VARCHAR, error_detail VARCHAR, {meta_cols})"
    )
    seq = 0
    for source in sources:
        n_source = 0
        for batch in source.scan():
            if batch.num_rows == 0:
                continue
            tbl = pa.Table.from_batches([batch])
            tbl = tbl.append_column("seq", pa.array(np.arange(seq, seq + tbl.num_rows, dtype=np.int64)))
            tbl = tbl.append_column("source", pa.array([source.name] * tbl.num_rows, pa.string()))
            seq += tbl.num_rows
            n_source += tbl.num_rows
            con.register("_batch", tbl)
            cols = [c for c in tbl.column_names if c in _scan_columns()]
            sel = ", ".join(f"CAST({quote_ident(c)} AS {_scan_type(c)}) AS {quote_ident(c)}" for c in cols)
            con.execute(f"INSERT INTO scan_raw BY NAME SELECT {sel} FROM _batch")
            con.unregister("_batch")
        report.source_reports[source.name] = dict(getattr(source, "report", {}) or {}, rows=n_source)
    hash_expr = "md5(concat_ws(chr(31), " + ", ".join(f"coalesce({quote_ident(c)}, chr(0))" for c in _SCAN_META) + "))"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE scan AS SELECT *, {hash_expr} AS meta_hash FROM ("
        "SELECT *, row_number() OVER (PARTITION BY key ORDER BY seq) AS _dup FROM scan_raw) WHERE _dup = 1"
    )
    con.execute("DROP TABLE scan_raw")
    report.scanned = con.execute("SELECT count(*) FROM scan").fetchall()[0][0]
    report.duplicates = seq - report.scanned
    if report.duplicates:
        log.warning("%d rows repeat a key seen earlier in the sources; the first one is used", report.duplicates)


def _scan_columns() -> set[str]:
    return {"source", "seq", "key", "location", "size", "mtime", "error_reason", "error_detail", *_SCAN_META}


def _scan_type(col: str) -> str:
    return {"seq": "BIGINT", "size": "BIGINT", "mtime": "DOUBLE"}.get(col, "VARCHAR")


# -- 2. diff ------------------------------------------------------------------------------------


def _classify(con, writer: Writer, sources: Sequence[Source], options: BuildOptions, report: BuildReport) -> None:
    """Split ``scan`` into: scan failures, unchanged, metadata-only, to fetch; find pruned ids."""
    same_file = "s.size IS NOT DISTINCT FROM l.size AND s.mtime IS NOT DISTINCT FROM l.mtime"
    con.execute(
        "CREATE OR REPLACE TEMP TABLE work AS SELECT s.*, l.id AS old_id, l.meta_hash AS old_meta_hash, "
        f"CASE WHEN s.error_reason IS NOT NULL THEN 'scan-failure' "
        f"WHEN l.id IS NULL THEN 'new' "
        f"WHEN {same_file} AND s.size IS NOT NULL AND s.meta_hash = l.meta_hash THEN 'unchanged' "
        f"WHEN {same_file} AND s.size IS NOT NULL THEN 'metadata' "
        # Remote and archive items have no size/mtime: they are unchanged unless their metadata is.
        f"WHEN s.size IS NULL AND l.size IS NULL AND s.meta_hash = l.meta_hash THEN 'unchanged' "
        f"WHEN s.size IS NULL AND l.size IS NULL THEN 'metadata' "
        "ELSE 'changed' END AS action "
        "FROM scan s LEFT JOIN live l ON s.key = l.key"
    )
    # Known failures are not tried again unless the file changed, the reason may pass, or asked.
    if not options.retry_failed:
        transient = ", ".join("'" + r + "'" for r in sorted(TRANSIENT_REASONS))
        con.execute(
            "UPDATE work SET action = 'known-failure' FROM failed f WHERE work.key = f.key "
            "AND work.action = 'new' AND work.size IS NOT DISTINCT FROM f.size "
            f"AND work.mtime IS NOT DISTINCT FROM f.mtime AND f.reason NOT IN ({transient})"
        )
    if options.rehash:
        _rehash(con, report, options)
    counts = dict(con.execute("SELECT action, count(*) FROM work GROUP BY action").fetchall())
    report.unchanged = counts.get("unchanged", 0)
    report.skipped_failed = counts.get("known-failure", 0)

    # Scan failures: recorded unless the same failure is already recorded.
    fails = con.sql(
        "SELECT w.key, w.source, w.location, 'scan' AS stage, w.error_reason AS reason, w.error_detail AS detail, "
        "w.size, w.mtime FROM work w LEFT JOIN failed f ON w.key = f.key "
        "WHERE w.action = 'scan-failure' AND (f.key IS NULL OR f.reason IS DISTINCT FROM w.error_reason "
        "OR f.size IS DISTINCT FROM w.size OR f.mtime IS DISTINCT FROM w.mtime)"
    ).to_arrow_table()
    if fails.num_rows:
        writer.record_failures(fails)
    for reason, n in con.execute(
        "SELECT error_reason, count(*) FROM work WHERE action = 'scan-failure' GROUP BY 1"
    ).fetchall():
        report.failed_by_reason[reason] = report.failed_by_reason.get(reason, 0) + n
    # A previously indexed key that now fails to scan keeps its old vector (nothing is lost).

    if options.prune:
        names = [s.name for s in sources]
        con.register("_sources", pa.table({"name": names}))
        gone = con.execute(
            "SELECT id FROM live WHERE source IN (SELECT name FROM _sources) AND key NOT IN (SELECT key FROM scan)"
        ).fetchall()
        if gone:
            writer.retire([i for (i,) in gone])
            report.pruned = len(gone)
            log.info("pruning %d images whose files are gone", len(gone))
        # Failures of files that are gone are cleared too (a record without a reason).
        cleared = con.sql(
            "SELECT key, source, location, 'pruned' AS stage, CAST(NULL AS VARCHAR) AS reason, "
            "'the file is gone' AS detail, size, mtime FROM failed "
            "WHERE source IN (SELECT name FROM _sources) AND key NOT IN (SELECT key FROM scan)"
        ).to_arrow_table()
        con.unregister("_sources")
        if cleared.num_rows:
            writer.record_failures(cleared)
            report.pruned_failures = cleared.num_rows
            log.info("clearing %d failures of files that are gone", cleared.num_rows)


def _rehash(con, report: BuildReport, options: BuildOptions) -> None:
    """``--rehash``: a local file whose size and modification time look unchanged is read and
    hashed; if its bytes differ from what was indexed it is re-encoded (and its old vector
    retired). Catches a file rewritten with its old timestamp. Reads every byte; decodes nothing."""
    from concurrent.futures import ThreadPoolExecutor

    from indexer.localfs import read_file

    rows = con.execute(
        "SELECT w.key, w.location, l.sha256 FROM work w JOIN live l ON w.key = l.key "
        "WHERE w.action IN ('unchanged', 'metadata') AND w.size IS NOT NULL "
        f"AND {kind_sql('w.location')} = 'file'"
    ).fetchall()

    def differs(row) -> str | None:
        key, location, sha = row
        try:
            data = read_file(location, max_bytes=options.max_bytes)
        except Exception:  # unreadable now: the build reads it again and records why
            return key
        return key if hashlib.sha256(data).hexdigest() != sha else None

    changed: list[str] = []
    bar = _progress(len(rows), options.progress, "hashing")
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        for key in pool.map(differs, rows):
            if key is not None:
                changed.append(key)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    report.rehashed = len(rows)
    if changed:
        con.register("_rehashed", pa.table({"key": pa.array(changed, pa.string())}))
        con.execute("UPDATE work SET action = 'changed' WHERE key IN (SELECT key FROM _rehashed)")
        con.unregister("_rehashed")
        log.info("%d files have new content with an unchanged size and time", len(changed))


def _row_tables(con, where: str, params: Sequence = ()) -> Iterable[pa.Table]:
    """The ``work`` rows matching ``where``, in key order, in chunks of ``_CHUNK_ROWS``."""
    total = con.execute(f"SELECT count(*) FROM work WHERE {where}", list(params)).fetchall()[0][0]
    for offset in range(0, total, _CHUNK_ROWS):
        yield con.sql(
            f"SELECT * FROM work WHERE {where} ORDER BY key LIMIT {_CHUNK_ROWS} OFFSET {offset}", params=list(params)
        ).to_arrow_table()


def _image_rows(chunk: pa.Table, extra: dict[str, Any] | None = None) -> pa.Table:
    """Columns of ``chunk`` that go into the collection (metadata + identity)."""
    keep = ["key", "source", "location", "size", "mtime", "meta_hash", *_SCAN_META]
    table = chunk.select([c for c in keep if c in chunk.column_names])
    for name, values in (extra or {}).items():
        table = table.append_column(name, values)
    return table


# -- 3. metadata-only updates --------------------------------------------------------------------


def _update_metadata_only(con, writer: Writer, report: BuildReport, committer: _Committer) -> None:
    for chunk in _row_tables(con, "action = 'metadata'"):
        old_ids = chunk.column("old_id").to_numpy()
        vectors = writer.snapshot().get_vectors(old_ids)
        extra = _carry_over(con, old_ids)
        writer.add(_image_rows(chunk, extra), vectors)
        writer.retire(old_ids)
        report.metadata_updated += chunk.num_rows
        committer.maybe_commit()


def _carry_over(con, old_ids: np.ndarray) -> dict[str, pa.Array]:
    """sha256 of the old rows (from the writer's live table), in the order of ``old_ids``."""
    con.register("_old", pa.table({"id": old_ids, "pos": np.arange(len(old_ids))}))
    rows = con.execute("SELECT l.sha256 FROM _old o JOIN live l USING (id) ORDER BY o.pos").fetchall()
    con.unregister("_old")
    return {"sha256": pa.array([r[0] for r in rows], pa.string())}


# -- 4. fetch, decode, encode ---------------------------------------------------------------------


def _process_fetch(
    con,
    writer: Writer,
    model,
    options: BuildOptions,
    report: BuildReport,
    committer: _Committer,
    collection,
    device: str = "auto",
) -> None:
    total = con.execute("SELECT count(*) FROM work WHERE action IN ('new', 'changed')").fetchall()[0][0]
    if total == 0:
        return
    batch_size = options.batch_size or default_batch_size(model)
    workers, threads = _plan_threads(str(model.device), options.workers)
    import torch

    torch.set_num_threads(threads)
    progress = _progress(total, options.progress)
    downloader = None
    # Remote items are downloaded one piece ahead, in a background thread, while the previous
    # piece is decoded and encoded: the network and the encoder work at the same time.
    from concurrent.futures import ThreadPoolExecutor

    if options.executor == "ray":
        return _process_fetch_ray(
            con, writer, model, options, report, committer, collection, batch_size, progress, device
        )
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="download")
    pending = None
    try:
        for chunk in _row_tables(con, "action IN ('new', 'changed')"):
            for piece in _pieces(chunk):
                locations = piece.column("location").to_pylist()
                remote = sorted(i for i, loc in enumerate(locations) if is_remote(loc))
                future = None
                if remote:
                    if downloader is None:
                        downloader = _make_downloader(options, collection)
                    future = pool.submit(_download, downloader, piece, remote)
                if pending is not None:
                    _finish_piece(*pending, model, writer, options, report, committer, batch_size, workers, progress)
                pending = (piece, remote, future)
        if pending is not None:
            _finish_piece(*pending, model, writer, options, report, committer, batch_size, workers, progress)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if downloader is not None:
            downloader.close()
        if progress is not None:
            progress.close()


def _process_fetch_ray(
    con, writer, model, options, report, committer, collection, batch_size, progress, device
) -> None:
    """The same work on Ray Data: decode tasks and encoder actors, possibly on many machines.

    Remote media are downloaded here first (the download cache is this machine's); everything
    decoded and encoded comes back to this process, the collection's single writer, which commits
    it exactly as the local executor does.
    """
    from indexer.ray_executor import encode_with_ray

    downloader = None

    def work():
        nonlocal downloader
        for chunk in _row_tables(con, "action IN ('new', 'changed')"):
            for piece in _pieces(chunk):
                locations = piece.column("location").to_pylist()
                remote = sorted(i for i, loc in enumerate(locations) if is_remote(loc))
                local_paths: dict[int, str] = {}
                if remote:
                    if downloader is None:
                        downloader = _make_downloader(options, collection)
                    local_paths, failures = _download(downloader, piece, remote)
                    if failures:
                        _record_item_failures(piece, failures, writer, report)
                remote_set = set(remote)
                todo = [i for i in range(piece.num_rows) if i not in remote_set or i in local_paths]
                yield piece, todo, local_paths

    try:
        for piece, ok, failed, vectors in encode_with_ray(
            work(),
            model_info=collection.model,
            options=options,
            batch_size=batch_size,
            model=model,
            device=None if device == "auto" else device,
        ):
            positions = list(range(piece.num_rows))
            _handle_batch(piece, positions, None, ok, failed, model, writer, report, committer, encoded=vectors)
            if progress is not None:
                progress.update(len(ok) + len(failed))
    finally:
        if downloader is not None:
            downloader.close()
        if progress is not None:
            progress.close()


_REMOTE_PIECE = 1024


def _pieces(chunk: pa.Table) -> Iterable[pa.Table]:
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


def _finish_piece(
    piece, remote, future, model, writer, options, report, committer, batch_size, workers, progress
) -> None:
    local_paths: dict[int, str] = {}
    if future is not None:
        local_paths, failures = future.result()
        if failures:
            _record_item_failures(piece, failures, writer, report)
            if progress is not None:
                progress.update(len(failures))
    remote_set = set(remote)
    todo = [i for i in range(piece.num_rows) if i not in remote_set or i in local_paths]
    _encode_chunk(piece, todo, local_paths, model, writer, options, report, committer, batch_size, workers, progress)


def _make_downloader(options: BuildOptions, collection):
    from indexer.fetch import DownloadConfig, Downloader

    cache = options.cache_dir or str(collection.path / "cache" / "media")
    os.makedirs(cache, exist_ok=True)
    return Downloader(DownloadConfig(cache_dir=cache))


def _download(downloader, chunk: pa.Table, remote: list[int]) -> tuple[dict[int, str], list[tuple[int, str, str, str]]]:
    """Download the remote items of ``chunk`` (bounded concurrency, cached).

    Runs in the download thread: touches neither the writer nor the report. Returns
    (row index -> downloaded file, failures as (row index, stage, reason, detail)).
    """
    from indexer.errors import FetchError

    locations = chunk.column("location").to_pylist()
    by_url: dict[str, list[int]] = collections.defaultdict(list)
    for i in remote:
        by_url[locations[i]].append(i)
    out: dict[int, str] = {}
    failures: list[tuple[int, str, str, str]] = []
    for url, result in downloader.fetch_many(list(by_url)):
        for i in by_url[url]:
            if isinstance(result, FetchError):
                failures.append((i, result.stage, result.reason, result.detail))
            else:
                out[i] = result
    return out, failures


def _record_item_failures(
    chunk: pa.Table, failures: list[tuple[int, str, str, str]], writer: Writer, report: BuildReport
) -> None:
    idx = pa.array([f[0] for f in failures], pa.int64())
    rows = chunk.take(idx).select(["key", "source", "location", "size", "mtime"])
    rows = rows.append_column("stage", pa.array([f[1] for f in failures], pa.string()))
    rows = rows.append_column("reason", pa.array([f[2] for f in failures], pa.string()))
    rows = rows.append_column("detail", pa.array([f[3] for f in failures], pa.string()))
    writer.record_failures(rows)
    # A changed file that no longer reads (truncated, overwritten with something else) loses its
    # old vector: it described content that is gone. The failure is listed; fixing the file and
    # building again indexes it. A transient failure (a download timeout) keeps the old vector.
    if "old_id" in chunk.column_names:
        old_ids = chunk.column("old_id").to_pylist()
        stale = [old_ids[f[0]] for f in failures if old_ids[f[0]] is not None and f[2] not in TRANSIENT_REASONS]
        if stale:
            writer.retire(stale)
            report.replaced_by_failure += len(stale)
    for f in failures:
        report.failed_by_reason[f[2]] = report.failed_by_reason.get(f[2], 0) + 1
        log.debug("failed %s: %s %s", chunk.column("location")[f[0]].as_py(), f[2], f[3])


def _encode_chunk(
    chunk: pa.Table,
    todo: list[int],
    local_paths: dict[int, str],
    model,
    writer: Writer,
    options: BuildOptions,
    report: BuildReport,
    committer: _Committer,
    batch_size: int,
    workers: int,
    progress,
) -> None:
    """Run the items ``todo`` of ``chunk`` through decode workers and the encoder."""
    if not todo:
        return
    remaining = list(todo)
    crashes = 0
    while remaining:
        done: list[int] = []
        try:
            for batch, ok, failed in _loader(chunk, remaining, local_paths, model, options, batch_size, workers):
                _handle_batch(chunk, remaining, batch, ok, failed, model, writer, report, committer)
                done.extend(remaining[r["i"]] for r in ok)
                done.extend(remaining[r["i"]] for r in failed)
                if progress is not None:
                    progress.update(len(ok) + len(failed))
                    progress.set_postfix(failed=report.failed, refresh=False)
            remaining = []
        except _LoaderCrash as crash:
            crashes += 1
            finished = set(done)
            remaining = [p for p in remaining if p not in finished]
            if not remaining:
                break
            # The first item not yet done was in the batch being decoded when the worker died;
            # after a second crash there, record it as a failure rather than loop forever.
            if crashes >= 2:
                bad = remaining.pop(0)
                _record_item_failures(chunk, [(bad, "decode", "worker-crashed", str(crash))], writer, report)
                crashes = 0
            log.warning("a decode worker died (%s); continuing with %d items", crash, len(remaining))


class _LoaderCrash(Exception):
    """A decode worker process died (killed, out of memory, a crash in a native decoder)."""


def _loader(chunk, positions, local_paths, model, options, batch_size, workers):
    """Yield (tensor batch, ok records, failed records) with record["i"] indexing ``positions``."""
    from torch.utils.data import DataLoader

    locations = chunk.column("location").to_pylist()
    dataset = _ItemDataset(
        [locations[p] for p in positions],
        model.transform,
        tuple(model.preprocess_config.draft_size),
        options.max_pixels,
        options.max_bytes,
        {j: local_paths[p] for j, p in enumerate(positions) if p in local_paths},
    )
    cuda = str(model.device).startswith("cuda")
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=cuda,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
        multiprocessing_context=_mp_context() if workers else None,
    )
    try:
        yield from loader
    except RuntimeError as exc:
        if "DataLoader worker" in str(exc) or "exited unexpectedly" in str(exc):
            raise _LoaderCrash(str(exc)) from exc
        raise


def _mp_context():
    import multiprocessing as mp

    # fork is fastest and shares the chunk without pickling; fall back where it is unavailable.
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def _handle_batch(chunk, positions, batch, ok, failed, model, writer, report, committer, encoded=None) -> None:
    """Commit one batch: failures recorded, vectors reused by content hash or encoded (``batch``, a
    tensor of the ``ok`` items) or given (``encoded``, vectors computed elsewhere, e.g. by Ray)."""
    if failed:
        _record_item_failures(
            chunk, [(positions[r["i"]], r["stage"], r["reason"], r.get("detail", "")) for r in failed], writer, report
        )
    if not ok:
        committer.maybe_commit()
        return
    idx = [positions[r["i"]] for r in ok]
    shas = [r["sha256"] for r in ok]
    # A file whose bytes are already indexed (renamed or copied) reuses the stored vector.
    reuse = _lookup_hashes(writer, committer, shas)
    vectors = np.empty((len(ok), writer.collection.dimension), dtype=np.float32)
    need = [j for j, s in enumerate(shas) if s not in reuse]
    if need and encoded is not None:
        vectors[need] = np.asarray(encoded, dtype=np.float32)[need]
    elif need:
        t0 = time.monotonic()
        sel = batch if len(need) == len(ok) else batch[need]
        vectors[need] = model.encode_image_tensors(sel)
        report.encode_seconds += time.monotonic() - t0
    for j, s in enumerate(shas):
        if s in reuse:
            vectors[j] = reuse[s]
    report.encoded += len(need)
    report.reused += len(ok) - len(need)
    rows = chunk.take(pa.array(idx, pa.int64()))
    extra = {
        "sha256": pa.array(shas, pa.string()),
        "width": pa.array([r["width"] for r in ok], pa.int32()),
        "height": pa.array([r["height"] for r in ok], pa.int32()),
    }
    writer.add(_image_rows(rows, extra), vectors)
    old = [v for v in rows.column("old_id").to_pylist() if v is not None]
    if old:
        writer.retire(old)
        report.replaced += len(old)
    for j, s in enumerate(shas):
        committer.pending_sha.setdefault(s, vectors[j])
    if committer.hashes is not None:
        committer.hashes.add(shas)
    committer.maybe_commit()


def _prefix(sha: str) -> int:
    return int(sha[:15], 16)


class _HashIndex:
    """Which content hashes the collection already holds, answered without scanning it per batch.

    A sorted array of 60-bit hash prefixes (8 bytes per image, built once per run from the writer's
    ``live`` table) plus the prefixes added during this run. A prefix hit (rare: a renamed or
    copied file) is confirmed against the full hash in DuckDB; stale prefixes of retired rows only
    cause a confirmation that finds nothing.
    """

    def __init__(self, con):
        got = con.execute(
            "SELECT ('0x' || substr(sha256, 1, 15))::UBIGINT AS p FROM live WHERE sha256 IS NOT NULL"
        ).fetchnumpy()["p"]
        self._sorted = np.sort(np.asarray(got, dtype=np.uint64))
        self._added: set[int] = set()

    def maybe_known(self, shas: list[str]) -> list[str]:
        if not shas:
            return []
        prefixes = np.array([_prefix(s) for s in shas], dtype=np.uint64)
        hit = np.zeros(len(shas), dtype=bool)
        if len(self._sorted):
            pos = np.minimum(np.searchsorted(self._sorted, prefixes), len(self._sorted) - 1)
            hit = self._sorted[pos] == prefixes
        return [s for s, h, p in zip(shas, hit, prefixes) if h or int(p) in self._added]

    def add(self, shas: list[str]) -> None:
        self._added.update(_prefix(s) for s in shas)


def _lookup_hashes(writer: Writer, committer: _Committer, shas: list[str]) -> dict[str, np.ndarray]:
    """Stored vectors for the hashes that are already indexed (committed or pending in this run)."""
    found: dict[str, np.ndarray] = {s: committer.pending_sha[s] for s in shas if s in committer.pending_sha}
    if committer.hashes is None:
        committer.hashes = _HashIndex(writer.con)
    rest = committer.hashes.maybe_known([s for s in set(shas) if s not in found])
    if rest:
        con = writer.con
        con.register("_sha", pa.table({"sha256": rest}))
        rows = con.execute(
            "SELECT sha256, min(id) FROM live WHERE sha256 IN (SELECT sha256 FROM _sha) GROUP BY 1"
        ).fetchall()
        con.unregister("_sha")
        if rows:
            vecs = writer.snapshot().get_vectors([i for _, i in rows])
            for (s, _), v in zip(rows, vecs):
                found[s] = v
    return found


def _progress(total: int, enabled: bool, desc: str = "indexing"):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", dynamic_ncols=True, smoothing=0.05, desc=desc)
