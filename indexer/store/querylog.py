"""The opt-in log of query vectors a collection keeps for tuning its index on real queries.

Off unless asked for (``bioclip-search --log-queries``, ``SearchEngine(log_queries=...)``, the app's
``BIOCLIP_SEARCH_LOG_QUERIES``). Where and what:

``COLLECTION/querylog/q-<UTC time>-<pid>-<random>.bin``, one file per engine process: a 16-byte
header (``BCQLOG1\\0``, the dimension as uint32, 4 reserved bytes), then one record per query: its
kind (uint8: 0 image, 1 text, 2 mixed) and its unit vector (float16 x d). Records are appended with
one ``write`` each, so concurrent processes never interleave bytes; a record cut short by a crash
is ignored. Only vectors are written. With ``text=True`` the text terms of each query go to a
``.jsonl`` beside it (``{"n": record, "kind": ..., "terms": [[kind, weight, text], ...]}``); pictures
are never logged, only their vectors.

Bounded: at most ``RECORDS_PER_FILE`` records per file and ``MAX_RECORDS`` in all (~50 MB at 512-d);
a process starting a new file first deletes the oldest files beyond that. The same query vector
again (the next page, a facet count) is logged once. A collection folder the process cannot write
turns logging off with one warning; a search never fails because of its log.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["QueryLog", "read_query_log", "LOG_DIR", "KIND_CODES", "MAX_RECORDS", "RECORDS_PER_FILE"]

log = logging.getLogger(__name__)

LOG_DIR = "querylog"
KIND_CODES = {"image": 0, "text": 1, "mixed": 2}
MAX_RECORDS = 50_000
RECORDS_PER_FILE = 5_000
_MAGIC = b"BCQLOG1\0"
_HEADER = 16
_RECENT = 1024


def _record_dtype(d: int) -> np.dtype:
    return np.dtype([("kind", "u1"), ("vector", "<f2", (d,))])


class QueryLog:
    """Appends query vectors (and, with ``text``, their text terms) to this process's log file in
    ``COLLECTION/querylog/``. Thread-safe; never raises out of :meth:`append`."""

    def __init__(self, collection_path: str | os.PathLike, dimension: int, *, text: bool = False):
        self.folder = Path(collection_path) / LOG_DIR
        self.dimension = int(dimension)
        self.text = text
        self._dtype = _record_dtype(self.dimension)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._count = 0
        self._recent: OrderedDict[bytes, None] = OrderedDict()
        self.disabled = False

    def append(self, vector: np.ndarray, kind: str, terms: Sequence[tuple[str, float, str | None]] = ()) -> bool:
        """Log one query (a unit vector of the collection's dimension and its kind); ``terms``
        (kind, weight, text or None) go to the text log when it is on. Returns whether it was written."""
        if self.disabled:
            return False
        rec = np.zeros(1, dtype=self._dtype)
        rec["kind"] = KIND_CODES[kind]
        rec["vector"][0] = np.asarray(vector, dtype=np.float32).reshape(-1)[: self.dimension]
        data = rec.tobytes()
        with self._lock:
            if data in self._recent:
                self._recent.move_to_end(data)
                return False
            try:
                if self._fd is None or self._count >= RECORDS_PER_FILE:
                    self._start_file()
                assert self._fd is not None and self._path is not None
                os.write(self._fd, data)
                if self.text:
                    line = {"n": self._count, "kind": kind, "terms": [list(t) for t in terms]}
                    with open(self._path.with_suffix(".jsonl"), "a", encoding="utf-8") as f:
                        f.write(json.dumps(line, ensure_ascii=False) + "\n")
            except OSError as exc:
                log.warning("cannot write the query log in %s (%s); query logging is off", self.folder, exc)
                self.disabled = True
                self.close()
                return False
            self._count += 1
            self._recent[data] = None
            while len(self._recent) > _RECENT:
                self._recent.popitem(last=False)
        return True

    def _start_file(self) -> None:
        self.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        _prune(self.folder, MAX_RECORDS - RECORDS_PER_FILE, self.dimension)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self._path = self.folder / f"q-{stamp}-{os.getpid()}-{secrets.token_hex(3)}.bin"
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        header = _MAGIC + np.uint32(self.dimension).tobytes() + b"\0" * 4
        os.write(fd, header)
        self._fd, self._count = fd, 0

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:  # pragma: no cover
                pass
            self._fd = None


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("q-*.bin")) if folder.is_dir() else []


def _read(path: Path, d: int) -> np.ndarray | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < _HEADER or data[:8] != _MAGIC or int(np.frombuffer(data[8:12], "<u4")[0]) != d:
        log.warning("ignoring %s: not a query log of %d-d vectors", path, d)
        return None
    dtype = _record_dtype(d)
    whole = (len(data) - _HEADER) // dtype.itemsize  # a record cut short by a crash is ignored
    return np.frombuffer(data, dtype=dtype, count=whole, offset=_HEADER)


def _prune(folder: Path, keep: int, d: int) -> None:
    """Delete the oldest log files until at most ``keep`` records remain."""
    files = _files(folder)
    sizes = [max(0, (f.stat().st_size - _HEADER) // _record_dtype(d).itemsize) for f in files]
    total = sum(sizes)
    for f, size in zip(files, sizes):
        if total <= keep:
            break
        try:
            f.unlink()
            f.with_suffix(".jsonl").unlink(missing_ok=True)
        except OSError:  # pragma: no cover - another process pruned it first
            pass
        total -= size


def read_query_log(collection_path: str | os.PathLike, dimension: int) -> dict[str, np.ndarray]:
    """kind -> (m, d) float32 logged query vectors, oldest first (kinds with none left out)."""
    parts: dict[str, list[np.ndarray]] = {}
    names = {code: kind for kind, code in KIND_CODES.items()}
    for path in _files(Path(collection_path) / LOG_DIR):
        recs = _read(path, dimension)
        if recs is None or not recs.size:
            continue
        for code, kind in names.items():
            sel = recs["vector"][recs["kind"] == code]
            if sel.size:
                parts.setdefault(kind, []).append(sel.astype(np.float32))
    return {kind: np.concatenate(p) for kind, p in parts.items()}
