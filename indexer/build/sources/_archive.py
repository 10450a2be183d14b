"""Read-only access to the files of a Darwin Core Archive: a folder, a zip, or a (compressed) tar (private).

Data files are handed to DuckDB as local UTF-8 files: a folder's UTF-8 files are read in place;
zip members are copied (and transcoded when needed) one by one into a temporary folder; a tar is
unpacked once into that folder, since a compressed tar cannot be read at random. The temporary
folder is removed by :meth:`ArchiveFiles.close`. Nothing is ever extracted next to the archive.
"""

from __future__ import annotations

import codecs
import logging
import os
import posixpath
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from indexer.errors import SourceError

__all__ = ["ArchiveFiles", "is_junk", "normalise_encoding"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_UTF8_BOM = b"\xef\xbb\xbf"


def is_junk(name: str) -> bool:
    """Entries that operating systems add to archives: macOS resource forks, Finder and Windows files."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        return True
    if parts[0] == "__MACOSX":
        return True
    base = parts[-1]
    return base.startswith("._") or base in (".DS_Store", "Thumbs.db", "desktop.ini")


def _latin1_fallback(exc: UnicodeError) -> tuple[str, int]:
    assert isinstance(exc, UnicodeDecodeError)  # registered for decoding only
    # Windows-1252 leaves five bytes undefined; real files that contain them mean the Latin-1
    # control characters, so map them like Latin-1 instead of failing the whole archive.
    bad = exc.object[exc.start : exc.end]
    return bytes(bad).decode("latin-1"), exc.end


codecs.register_error("bioclip-latin1", _latin1_fallback)


def normalise_encoding(declared: str | None, where: str) -> str:
    """Python codec name for an encoding named in meta.xml (UTF-8 when absent).

    ISO-8859-1 / Latin-1 is read as Windows-1252 (a superset for every printable character;
    exports labelled Latin-1 routinely contain Windows-1252 quotes and dashes).
    """
    name = (declared or "UTF-8").strip() or "UTF-8"
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        raise SourceError(f"{where}: unknown encoding {name!r} in meta.xml", where) from None
    if codec in ("iso8859-1", "latin-1", "cp1252"):
        return "cp1252"
    return codec


def _transcode(src: BinaryIO, dst: BinaryIO, encoding: str) -> None:
    """Copy ``src`` to ``dst`` as UTF-8, decoding from ``encoding`` in chunks (memory stays flat)."""
    head = src.read(_CHUNK)
    if encoding == "utf-8" or head.startswith(_UTF8_BOM):
        # Declared UTF-8, or a UTF-8 byte order mark whatever the declaration says: copy as is
        # (DuckDB skips the BOM itself).
        dst.write(head)
        shutil.copyfileobj(src, dst, _CHUNK)
        return
    decoder = codecs.getincrementaldecoder(encoding)(errors="bioclip-latin1" if encoding == "cp1252" else "strict")
    first = True
    chunk = head
    while True:
        final = not chunk
        text = decoder.decode(chunk, final=final)
        if first and text:
            text = text.lstrip("\ufeff")
            first = False
        dst.write(text.encode("utf-8"))
        if final:
            break
        chunk = src.read(_CHUNK)


class ArchiveFiles:
    """The files of one archive, addressed by their path inside it (``/``-separated).

    ``names`` lists every regular, non-junk file. :meth:`read` returns a (small) file's bytes;
    :meth:`local_utf8` returns the path of a local UTF-8 copy for DuckDB. Raises SourceError for
    unreadable or unsafe archives. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str, *, only: str | None = None):
        self.path = os.path.abspath(path)
        self.label = os.path.basename(self.path.rstrip(os.sep)) or self.path
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._zip: zipfile.ZipFile | None = None
        self._root: str | None = None  # folder the names are relative to (folder or unpacked tar)
        self._copies: dict[tuple[str, str], str] = {}
        self._pending: dict[tuple[str, str], Future] = {}
        self._pool: ThreadPoolExecutor | None = None
        if only is not None:
            self.kind = "folder"
            self._root = self.path
            self.names = [only]
        elif os.path.isdir(self.path):
            self.kind = "folder"
            self._root = self.path
            self.names = self._list_folder(self.path)
        elif zipfile.is_zipfile(self.path):
            self.kind = "zip"
            try:
                self._zip = zipfile.ZipFile(self.path)
                infos = self._zip.infolist()
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                raise SourceError(f"{self.path}: not a readable zip file ({exc})", self.path) from exc
            self._zip_names = {}
            for info in infos:
                name = info.filename.replace("\\", "/")
                if info.is_dir() or is_junk(name):
                    continue
                self._zip_names[posixpath.normpath(name).lstrip("/")] = info
            self.names = sorted(self._zip_names)
        elif _is_tar(self.path):
            self.kind = "tar"
            self._root = self._tmpdir("unpacked")
            self.names = self._unpack_tar()
        else:
            raise SourceError(
                f"{self.path}: not a Darwin Core Archive (expected a folder, a .zip or a .tar/.tgz)", self.path
            )

    @classmethod
    def single_file(cls, path: str) -> ArchiveFiles:
        """One CSV/TSV file as an archive of one member (its folder is not listed)."""
        path = os.path.abspath(path)
        return cls(os.path.dirname(path), only=os.path.basename(path))

    # -- listing ---------------------------------------------------------------------------------

    @staticmethod
    def _list_folder(root: str) -> list[str]:
        # The top level, and one level down only when meta.xml is not at the top: a folder archive
        # may sit next to a large image tree, and meta.xml is at the top or in a single sub-folder.
        def files_in(folder: str, prefix: str) -> tuple[list[str], list[os.DirEntry]]:
            found, dirs = [], []
            for e in os.scandir(folder):
                if is_junk(e.name):
                    continue
                if e.is_file():
                    found.append(prefix + e.name)
                elif e.is_dir():
                    dirs.append(e)
            return found, dirs

        try:
            names, dirs = files_in(root, "")
        except OSError as exc:
            raise SourceError(f"{root}: cannot list folder ({exc.strerror or exc})", root) from exc
        if not any(n.lower() == "meta.xml" for n in names):
            for d in dirs:
                try:
                    names += files_in(d.path, d.name + "/")[0]
                except OSError:
                    continue
        return sorted(names)

    def _tmpdir(self, sub: str) -> str:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="bioclip-dwca-")
        path = os.path.join(self._tmp.name, sub)
        os.makedirs(path, exist_ok=True)
        return path

    def _unpack_tar(self) -> list[str]:
        names: list[str] = []
        assert self._root is not None
        try:
            with tarfile.open(self.path, mode="r|*") as tf:
                for member in tf:
                    name = posixpath.normpath(member.name.replace("\\", "/")).lstrip("/")
                    if not member.isfile() or is_junk(name) or name.startswith("..") or name == ".":
                        continue
                    target = os.path.join(self._root, *name.split("/"))
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    src = tf.extractfile(member)
                    if src is None:
                        continue
                    with open(target, "wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
                    names.append(name)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise SourceError(f"{self.path}: not a readable tar archive ({exc})", self.path) from exc
        return sorted(names)

    # -- reading ---------------------------------------------------------------------------------

    def find(self, name: str) -> str | None:
        """The archive's spelling of ``name`` (exact, else case-insensitive), or None."""
        name = posixpath.normpath(name.replace("\\", "/")).lstrip("/")
        if self.kind == "folder":
            assert self._root is not None
            if os.path.isfile(os.path.join(self._root, *name.split("/"))):
                return name
        if name in self.names:
            return name
        lowered = name.lower()
        matches = [n for n in self.names if n.lower() == lowered]
        return matches[0] if len(matches) == 1 else None

    def read(self, name: str, limit: int = 64 << 20) -> bytes:
        """Bytes of a member (meta.xml and the like; refuses more than ``limit`` bytes)."""
        try:
            with self._open(name) as fh:
                data = fh.read(limit + 1)
        except (OSError, zlib.error, zipfile.BadZipFile, EOFError, tarfile.TarError) as exc:
            raise SourceError(f"{self.path}: cannot read {name}: the archive is damaged ({exc})", self.path) from exc
        if len(data) > limit:
            raise SourceError(f"{self.path}: {name} is larger than {limit >> 20} MiB", self.path)
        return data

    def _open(self, name: str) -> BinaryIO:
        try:
            if self._zip is not None:
                return self._zip.open(self._zip_names[name])  # type: ignore[return-value]
            assert self._root is not None
            return open(os.path.join(self._root, *name.split("/")), "rb")
        except KeyError:
            raise SourceError(f"{self.path}: no file {name} in the archive", self.path) from None
        except (OSError, RuntimeError, NotImplementedError, zipfile.BadZipFile) as exc:
            # RuntimeError: an encrypted member; NotImplementedError: a compression zipfile lacks (Deflate64)
            raise SourceError(f"{self.path}: cannot read {name} ({exc})", self.path) from exc

    def prefetch(self, items: list[tuple[str, str]]) -> None:
        """Start copying ``(name, encoding)`` members in the background, in order.

        While DuckDB parses the core, the extensions are being inflated: on two cores that hides
        most of the copying. :meth:`local_utf8` waits for (and re-raises the errors of) a prefetch.
        """
        todo = [
            (n, e) for n, e in items if (n, e) not in self._copies and not (self._root is not None and e == "utf-8")
        ]
        if not todo:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bioclip-dwca-copy")
        for n, e in todo:
            if (n, e) not in self._pending:
                self._pending[(n, e)] = self._pool.submit(self._copy, n, e, len(self._pending))

    def local_utf8(self, name: str, encoding: str) -> str:
        """Path of ``name`` as a local UTF-8 file (the file itself when possible, else a temp copy)."""
        key = (name, encoding)
        if key in self._copies:
            return self._copies[key]
        if self._root is not None and encoding == "utf-8":
            path = os.path.join(self._root, *name.split("/"))
            self._copies[key] = path
            return path
        pending = self._pending.pop(key, None)
        path = pending.result() if pending is not None else self._copy(name, encoding, len(self._copies) + 1000)
        self._copies[key] = path
        return path

    def _copy(self, name: str, encoding: str, n: int) -> str:
        target = os.path.join(self._tmpdir("data"), f"{n:04d}-{posixpath.basename(name)}")
        try:
            with self._open(name) as src, open(target, "wb") as dst:
                _transcode(src, dst, encoding)
        except UnicodeDecodeError as exc:
            raise SourceError(f"{self.path}: {name} is not valid {encoding} text ({exc.reason})", self.path) from exc
        except (OSError, zlib.error, zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError) as exc:
            raise SourceError(f"{self.path}: cannot read {name} ({exc})", self.path) from exc
        return target

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._copies.clear()

    def __enter__(self) -> ArchiveFiles:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_tar(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return False
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        return True  # compressed: tarfile will tell whether a tar is inside
    return len(head) >= 262 and head[257:262] == b"ustar"
