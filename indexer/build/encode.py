"""Stage 4, encode: an executor's results become vectors, each image's bytes encoded at most once.

A file whose bytes are already indexed (renamed or copied, or seen earlier in this run) reuses the
stored vector; the others are encoded here from the decoded tensors (local executor) or come
encoded (Ray). The rows then go to the writer with their content hash and pixel size, and the old
id of a changed file is retired, recording the new id that replaces it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from indexer.build.commit import record_item_failures
from indexer.build.context import BuildRun
from indexer.build.work import image_rows

__all__ = ["Results", "commit_results"]


@dataclass
class Results:
    """What an executor hands back for some rows of one piece of work.

    ``ok`` records are ``{"i", "sha256", "width", "height"}``, ``failed`` ones ``{"i", "stage",
    "reason", "detail"}``; ``i`` is the row in ``table``. Either ``tensors`` holds the ok items'
    preprocessed images (to encode in this process) or ``vectors`` their float32 vectors, aligned
    with ``ok``.
    """

    table: pa.Table
    ok: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    tensors: Any = None
    vectors: np.ndarray | None = None
    decoded_on_device: int = 0  # of ``ok``, how many the device's JPEG decoder decoded

    @property
    def count(self) -> int:
        return len(self.ok) + len(self.failed)


def commit_results(run: BuildRun, model: Any, results: Results) -> None:
    """Buffer one batch of results in the writer (failures recorded, vectors reused by content hash
    or encoded) and commit when a unit of work is complete."""
    writer, report, committer = run.writer, run.report, run.committer
    chunk, ok, failed = results.table, results.ok, results.failed
    report.decoded_on_device += results.decoded_on_device
    if failed:
        record_item_failures(run, chunk, [(r["i"], r["stage"], r["reason"], r.get("detail", "")) for r in failed])
    if not ok:
        committer.maybe_commit()
        return
    idx = [r["i"] for r in ok]
    shas = [r["sha256"] for r in ok]
    # A file whose bytes are already indexed (renamed or copied) reuses the stored vector.
    reuse = _lookup_hashes(run, shas)
    vectors = np.empty((len(ok), writer.collection.dimension), dtype=np.float32)
    need = [j for j, s in enumerate(shas) if s not in reuse]
    if need and results.vectors is not None:
        vectors[need] = np.asarray(results.vectors, dtype=np.float32)[need]
    elif need:
        t0 = time.monotonic()
        batch = results.tensors
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
    new_ids = writer.add(image_rows(rows, extra), vectors)
    # A changed file's old id is retired, recording the id of its new pixels.
    pairs = [(old, int(new)) for old, new in zip(rows.column("old_id").to_pylist(), new_ids) if old is not None]
    if pairs:
        writer.retire([old for old, _ in pairs], replaced_by=[new for _, new in pairs], reason="changed")
        report.replaced += len(pairs)
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

    def __init__(self, con: Any):
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


def _lookup_hashes(run: BuildRun, shas: list[str]) -> dict[str, np.ndarray]:
    """Stored vectors for the hashes that are already indexed (committed or pending in this run)."""
    writer, committer = run.writer, run.committer
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
