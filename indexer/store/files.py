"""Atomic file writes: a reader sees nothing or the whole file, whatever happens to the writer.

The one rule, for every file the project writes (collection data, ANN indexes, downloaded media,
thumbnails): the bytes go to a temporary file in the target's own folder (a name starting with
``.``, which a collection's writer deletes as left-over when no generation references it), the file
is flushed and fsynced, renamed over the target, and the folder is fsynced so that the rename
itself survives a power cut. ``durable=False`` (caches of derived data) skips the two fsyncs: a
power cut may then lose the file, but never leaves part of one under the final name.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from indexer.errors import DiskFullError

__all__ = [
    "is_out_of_space",
    "disk_full_error",
    "human_bytes",
    "atomic_file",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "fsync_dir",
]


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of folder ``path`` (a rename into it) durable; a no-op where folders
    cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _temp_beside(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


@contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """A temporary file name beside ``path`` for a writer that takes a name (FAISS, a copy).

    When the block ends normally the file replaces ``path`` (see the module's rule); when it raises,
    the temporary file is deleted and ``path`` is untouched.
    """
    target = Path(path)
    tmp = _temp_beside(target)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(target.parent)


@contextmanager
def atomic_file(path: str | os.PathLike, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file open for writing that replaces ``path`` when the block ends normally (see the
    module's rule); when the block raises, nothing is left behind and ``path`` is untouched."""
    with atomic_path(path, durable=durable) as tmp, open(tmp, "wb") as f:
        yield f


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or all of it."""
    with atomic_file(path, durable=durable) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented, key-sorted JSON (a stable text for files people read and diff)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


#: errno values of a write that found no room: a full disk, an exceeded quota.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` (from writing a file) means the disk or the quota is full: an OSError with
    ENOSPC / EDQUOT, or a RuntimeError of a C++ writer (FAISS) that reports one of them."""
    if isinstance(exc, OSError):
        return exc.errno in _NO_SPACE
    if isinstance(exc, RuntimeError):
        text = str(exc)
        return any(os.strerror(code) in text for code in _NO_SPACE)
    return False


def disk_full_error(path: str | os.PathLike, needed: int, what: str) -> DiskFullError:
    """The one-line error for a write into ``path`` (a collection) that found the disk full:
    what was being written, about how much it needed, how much is free now."""
    path = os.fspath(path)
    try:
        free = shutil.disk_usage(path).free
    except OSError:  # pragma: no cover - the folder itself is gone
        free = 0
    more = max(needed - free, 0)
    return DiskFullError(
        f"the disk holding the collection {path} is full: {what} needs about {human_bytes(needed)} and "
        f"{human_bytes(free)} is free; free at least {human_bytes(max(more, 1 << 20))} more and run the same "
        "command again (everything committed before is intact)",
        path,
        needed,
        free,
    )


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KB`` (powers of 1024, one decimal)."""
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover
