"""Local files: a robust recursive walk for folder sources and safe reads of one file.

Every path this module returns is in *text form* and every path it accepts may be (see
:func:`indexer.locations.path_to_text`: valid UTF-8, lossless, identical to the ordinary path for
every UTF-8 name; ``caf%%E9.jpg`` for a Latin-1 ``café.jpg``).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from indexer.errors import FetchError, QueryError, SourceError
from indexer.locations import path_to_text, text_to_path

__all__ = [
    "IMAGE_EXTENSIONS",
    "FileEntry",
    "FileProblem",
    "SkippedLink",
    "MAX_IMAGE_BYTES",
    "read_file",
    "read_query_file",
    "walk_images",
]

log = logging.getLogger(__name__)

#: File name extensions a folder source indexes (compared case-insensitively).
#: The formats a folder source picks up (any case). ``.mpo`` is the stereo/multi-picture JPEG some
#: cameras write (its first frame is indexed); ``.jpe``/``.jfif`` are older JPEG spellings.
IMAGE_EXTENSIONS: Final[frozenset[str]] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".mpo"}
)

#: Directory names skipped besides hidden ones: macOS resource-fork folders in zip exports.
_JUNK_DIRS: Final[frozenset[str]] = frozenset({"__MACOSX"})

_READ_CHUNK: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class FileEntry:
    """An image file found by :func:`walk_images`.

    ``path``: absolute path (symlinks not resolved), text form; ``relpath``: POSIX path relative to
    the walk's root, text form; ``size`` (bytes) and ``mtime`` (seconds since the epoch) of the file
    itself, after following symlinks.
    """

    path: str
    relpath: str
    size: int
    mtime: float


@dataclass(frozen=True, slots=True)
class FileProblem:
    """Something under the root that looks like an image (or a folder) but cannot be used.

    ``reason`` is a stable code (``broken-symlink``, ``symlink-loop``, ``permission-denied``,
    ``not-a-regular-file``, ``io-error``); ``detail`` a human-readable message. Paths as in FileEntry.
    """

    path: str
    relpath: str
    reason: str
    detail: str


# -- reading one file ------------------------------------------------------------------------------


def read_file(path: str | os.PathLike, *, max_bytes: int | None = None) -> bytes:
    """All bytes of the regular file at ``path`` (text form or raw), following symlinks.

    Raises FetchError with reason ``not-found``, ``broken-symlink``, ``symlink-loop``,
    ``permission-denied``, ``is-a-directory``, ``not-a-regular-file`` (FIFO, device, socket: never
    read, a FIFO would block and a device may never end), ``too-large`` (over ``max_bytes``,
    checked before reading and while reading, in case the file grows) or ``io-error``.
    """
    fs_path = text_to_path(path)
    shown = path_to_text(fs_path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it has no effect on regular files.
        fd = os.open(fs_path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _open_error(fs_path, shown, exc) from None
    try:
        try:
            info = os.fstat(fd)
        except OSError as exc:
            raise _open_error(fs_path, shown, exc) from None
        if stat.S_ISDIR(info.st_mode):
            raise FetchError("is-a-directory", f"{shown} is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise FetchError("not-a-regular-file", f"{shown} is a {_kind(info.st_mode)}, not a file")
        if max_bytes is not None and info.st_size > max_bytes:
            raise FetchError("too-large", f"{shown} has {info.st_size:,} bytes, over the limit of {max_bytes:,}")
        return _read_all(fd, info.st_size, max_bytes, shown)
    finally:
        os.close(fd)


#: Largest query picture read, in bytes (``BIOCLIP_SEARCH_MAX_IMAGE_MB``, default 100 MB): a query
#: is one picture, and a path such as /dev/zero or a FIFO must not be read until memory runs out.
MAX_IMAGE_BYTES = int(float(os.environ.get("BIOCLIP_SEARCH_MAX_IMAGE_MB", "100")) * 1024 * 1024)
#: Largest ``vector=FILE.npy`` read (one vector of a few thousand floats is a few KB).
_MAX_VECTOR_FILE = 16 << 20


def read_query_file(path: str | os.PathLike, max_bytes: int, what: str = "image") -> bytes:
    """The bytes of a query file: a regular file of at most ``max_bytes``, never a FIFO, device,
    socket or folder (which could block or never end). Raises QueryError saying what is wrong."""
    try:
        return read_file(os.fspath(path), max_bytes=max_bytes)
    except FetchError as exc:
        shown = os.fspath(path)
        if exc.reason == "too-large":
            raise QueryError(
                f"the {what} {shown} is larger than the {max_bytes / 1048576:g} MB a query {what} may be"
                + (" (BIOCLIP_SEARCH_MAX_IMAGE_MB sets the limit)" if what == "image" else "")
            ) from None
        wanted = "a picture file" if what == "image" else "a .npy file"
        if exc.reason == "not-a-regular-file":
            raise QueryError(f"the {what} {exc.detail}: give {wanted}") from None
        if exc.reason == "is-a-directory":
            raise QueryError(f"the {what} {shown} is a folder: give {wanted}") from None
        raise QueryError(f"cannot read the {what} {shown}: {exc.detail or exc.reason}") from None


def _read_all(fd: int, expected: int, max_bytes: int | None, shown: str) -> bytes:
    """Read to the end: one read of the expected size, then reads until EOF (the file may grow)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        want = max(expected - total, _READ_CHUNK)
        if max_bytes is not None:
            want = min(want, max_bytes + 1 - total)  # one byte past the limit proves it is over
        try:
            chunk = os.read(fd, want)
        except OSError as exc:
            if exc.errno == errno.EISDIR:
                raise FetchError("is-a-directory", f"{shown} is a directory") from None
            raise FetchError("io-error", f"cannot read {shown}: {exc.strerror or exc}") from None
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise FetchError("too-large", f"{shown} grew past the limit of {max_bytes:,} bytes while being read")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _open_error(fs_path: str, shown: str, exc: OSError) -> FetchError:
    """Name the reason ``os.open(fs_path)`` failed."""
    code = exc.errno
    if code == errno.ELOOP:
        return FetchError("symlink-loop", f"{shown}: too many levels of symbolic links")
    if code in (errno.EACCES, errno.EPERM):
        return FetchError("permission-denied", f"{shown}: permission denied")
    if code == errno.EISDIR:
        return FetchError("is-a-directory", f"{shown} is a directory")
    if code in (errno.ENOENT, errno.ENOTDIR):
        if os.path.islink(fs_path):
            target = _readlink(fs_path)
            return FetchError("broken-symlink", f"{shown} is a symbolic link to {target}, which does not exist")
        return FetchError("not-found", f"{shown} does not exist")
    return FetchError("io-error", f"cannot open {shown}: {exc.strerror or exc}")


def _readlink(fs_path: str) -> str:
    try:
        return path_to_text(os.readlink(fs_path))
    except OSError:
        return "?"


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


@dataclass(frozen=True, slots=True)
class SkippedLink:
    """A symbolic link under the walk's root that leads outside it, not followed (see
    :func:`walk_images`). ``path`` and ``relpath`` as in FileEntry; ``target`` is the real path it
    leads to (text form); ``is_dir`` whether that is a folder."""

    path: str
    relpath: str
    target: str
    is_dir: bool


# -- walking a folder ------------------------------------------------------------------------------


def walk_images(
    root: str | os.PathLike,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    *,
    follow_symlinks: bool = False,
    followed: list[str] | None = None,
) -> Iterator[FileEntry | FileProblem | SkippedLink]:
    """Every image file under ``root``, recursively, and a FileProblem for each one it cannot use.

    * Order is deterministic: each folder's entries sorted by their name's bytes, depth first,
      so the output is sorted by relpath compared folder by folder.
    * ``extensions`` match case-insensitively (``.JPG`` is an image), with or without the dot.
    * Hidden files and folders (name starts with ``.``, which includes macOS ``._*`` files) and
      ``__MACOSX`` folders are skipped.
    * Symlinks that lead outside ``root`` (their real path is not under ``root``'s real path) are
      not followed unless ``follow_symlinks``: each is a :class:`SkippedLink` (an image-named link
      or a link to a folder; other links are not images and are passed over). With
      ``follow_symlinks`` they are followed, and the real path of each such link's target is
      appended to ``followed`` (when given): the places outside ``root`` the images come from.
    * Symlinks inside ``root`` are followed, to files and to folders. A folder symlink that leads back to a
      folder being walked (a loop) is a FileProblem ``symlink-loop`` and is not entered (like
      ``find -L``); a folder reachable by two paths that is not a loop is listed under both.
      A symlink with an image extension that is broken, loops (``ELOOP``) or is unreadable is a
      FileProblem (``broken-symlink``, ``symlink-loop``, ``permission-denied``).
    * A folder that cannot be listed is a FileProblem (``permission-denied`` or ``io-error``) and
      the walk goes on. Files that vanish during the walk are skipped.
    * Special files with an image extension (FIFO, device, socket) are ``not-a-regular-file``.

    Raises SourceError when ``root`` itself is missing, not a folder, or unreadable.
    """
    fs_root = os.path.abspath(text_to_path(root))
    shown_root = path_to_text(fs_root)
    exts = frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    try:
        root_info = os.stat(fs_root)
    except OSError as exc:
        raise SourceError(f"cannot read folder {shown_root}: {exc.strerror or exc}", shown_root) from None
    if not stat.S_ISDIR(root_info.st_mode):
        raise SourceError(f"not a folder: {shown_root}", shown_root)
    try:
        top = _list_dir(fs_root)
    except OSError as exc:
        raise SourceError(f"cannot list folder {shown_root}: {exc.strerror or exc}", shown_root) from None

    # Each stack frame: (iterator over a folder's sorted entries, its relpath parts, the
    # (device, inode) of it and every folder above it, to recognise loops).
    stack: list[tuple[Iterator[os.DirEntry[str]], tuple[str, ...], frozenset[tuple[int, int]]]] = [
        (iter(top), (), frozenset({(root_info.st_dev, root_info.st_ino)}))
    ]
    real_root = os.path.realpath(fs_root)
    while stack:
        entries, parts, ancestors = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        name = entry.name
        if name.startswith(".") or name in _JUNK_DIRS:
            continue
        rel = parts + (name,)
        is_image = os.path.splitext(name)[1].lower() in exts
        try:
            is_link = entry.is_symlink()
            if is_link:
                info = os.stat(entry.path)  # the target
            elif entry.is_dir(follow_symlinks=False) or is_image:
                info = entry.stat(follow_symlinks=False)
            else:
                continue  # an ordinary non-image file: no system call spent on it
        except OSError as exc:
            if exc.errno == errno.ENOENT and not os.path.lexists(entry.path):
                continue  # deleted while we walked: not a problem, just gone
            if not is_image:
                # An unusable link without an image name could have been anything (a folder?).
                log.debug("skipping unusable entry %s: %s", path_to_text(entry.path), exc.strerror)
                continue
            yield _stat_problem(entry.path, path_to_text(entry.path), path_to_text("/".join(rel)), exc)
            continue
        is_dir = stat.S_ISDIR(info.st_mode)
        if is_link and (is_dir or is_image):
            target = os.path.realpath(entry.path)
            if not _under(target, real_root):
                if not follow_symlinks:
                    yield SkippedLink(
                        path_to_text(entry.path), path_to_text("/".join(rel)), path_to_text(target), is_dir
                    )
                    continue
                if followed is not None:
                    followed.append(path_to_text(target))
        if is_dir:
            ident = (info.st_dev, info.st_ino)
            shown = path_to_text(entry.path)
            relpath = path_to_text("/".join(rel))
            if ident in ancestors:
                via = f"symbolic link to {_readlink(entry.path)}" if is_link else "mount"
                yield FileProblem(
                    shown, relpath, "symlink-loop", f"{shown} ({via}) leads back to a folder above it; not entered"
                )
                continue
            try:
                children = _list_dir(entry.path)
            except OSError as exc:
                yield _list_problem(shown, relpath, exc)
                continue
            stack.append((iter(children), rel, ancestors | {ident}))
        elif is_image:
            shown = path_to_text(entry.path)
            relpath = path_to_text("/".join(rel))
            if stat.S_ISREG(info.st_mode):
                yield FileEntry(shown, relpath, info.st_size, info.st_mtime)
            else:
                yield FileProblem(
                    shown, relpath, "not-a-regular-file", f"{shown} is a {_kind(info.st_mode)}, not a file"
                )


def _under(path: str, root: str) -> bool:
    """Whether the real path ``path`` is the real path ``root`` or lies under it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _list_dir(fs_path: str) -> list[os.DirEntry[str]]:
    """A folder's entries sorted by the bytes of their names (independent of locale and escapes)."""
    with os.scandir(fs_path) as it:
        return sorted(it, key=lambda e: os.fsencode(e.name))


def _stat_problem(fs_path: str, shown: str, relpath: str, exc: OSError) -> FileProblem:
    code = exc.errno
    if code == errno.ELOOP:
        return FileProblem(shown, relpath, "symlink-loop", f"{shown}: too many levels of symbolic links")
    if code in (errno.ENOENT, errno.ENOTDIR):
        target = _readlink(fs_path)
        return FileProblem(
            shown, relpath, "broken-symlink", f"{shown} is a symbolic link to {target}, which does not exist"
        )
    if code in (errno.EACCES, errno.EPERM):
        return FileProblem(shown, relpath, "permission-denied", f"{shown}: permission denied")
    return FileProblem(shown, relpath, "io-error", f"cannot stat {shown}: {exc.strerror or exc}")


def _list_problem(shown: str, relpath: str, exc: OSError) -> FileProblem:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return FileProblem(shown, relpath, "permission-denied", f"cannot list folder {shown}: permission denied")
    return FileProblem(shown, relpath, "io-error", f"cannot list folder {shown}: {exc.strerror or exc}")
