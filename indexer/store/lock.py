"""The writer lock: one writing process per collection, refused at once when another holds it.

``writer.lock`` is held with a non-blocking exclusive ``flock``. The kernel releases it when the
process dies, even on SIGKILL. A forked child (a decode worker) inherits the descriptor, and an
flock lasts until every descriptor of it is closed, so a worker outliving a killed indexer would
keep the collection locked: every forked child closes its copies at once.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from indexer.errors import CollectionLockedError
from indexer.store.generations import utc_stamp

__all__ = ["WriterLock", "LOCK_FILE"]

LOCK_FILE = "writer.lock"

# Writer-lock descriptors this process holds (closed in forked children).
_HELD_LOCK_FDS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in list(_HELD_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class WriterLock:
    """The lock of the collection at ``folder``, taken by :meth:`acquire` and given back by
    :meth:`release` (both idempotent)."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_FILE
        self.folder = folder
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock now; raise CollectionLockedError naming the holder if it is taken."""
        import fcntl

        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                holder = ""
                try:
                    holder = self.path.read_text().strip()
                except OSError:
                    pass
                raise CollectionLockedError(
                    f"another indexer is writing to {self.folder}"
                    + (f" ({holder})" if holder else "")
                    + "; wait for it to finish (searching the collection meanwhile is fine)"
                ) from exc
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {utc_stamp()}".encode())
        self._fd = fd
        _HELD_LOCK_FDS.add(fd)

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            _HELD_LOCK_FDS.discard(self._fd)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
