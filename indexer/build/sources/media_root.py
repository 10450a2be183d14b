"""``--media-root PREFIX=DIR``: read published media URLs from a local image store instead."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc

from indexer.build.sources._common import LocalPath, path_to_text, stat_local, with_locations
from indexer.build.sources.base import Source
from indexer.errors import SourceError
from indexer.locations import is_remote, without_query

__all__ = ["MediaRootSource", "parse_media_root", "map_location"]

log = logging.getLogger(__name__)


def parse_media_root(text: str) -> tuple[str, str]:
    """``PREFIX=DIR`` -> (prefix, dir). Splits at the last ``=`` (URL prefixes may hold one)."""
    prefix, sep, directory = text.rpartition("=")
    if not sep or not prefix or not directory:
        raise SourceError(f"--media-root wants PREFIX=DIR, got {text!r}", None)
    return prefix, directory


def map_location(location: str, prefix: str, root: str) -> tuple[str | None, str | None]:
    """The path under ``root`` for a location that starts with ``prefix``: ``(path, None)``, or
    ``(None, why)`` when the rest of the URL would leave ``root`` (``..``) or is not a path.

    The rest is URL-decoded; a query string or fragment is dropped (a file name has none).
    """
    rest = without_query(location[len(prefix) :])
    rel = unquote(rest, errors="surrogateescape").replace("\\", "/").lstrip("/")
    if not rel or "\x00" in rel:
        return None, f"{location!r} names no file under {prefix!r}"
    parts = rel.split("/")
    if any(p == ".." for p in parts):
        return None, f"{location!r} would leave the media root {root} ('..' in the path)"
    path = os.path.normpath(os.path.join(root, *[p for p in parts if p not in ("", ".")]))
    if path != root and not path.startswith(root.rstrip(os.sep) + os.sep):
        return None, f"{location!r} would leave the media root {root}"
    return path, None


class MediaRootSource:
    """Wraps a source so that locations starting with a mapped prefix read from a local folder.

    For such a row, ``location`` becomes the file under DIR (longest matching prefix wins),
    ``size``/``mtime`` its stat, ``mediaURL`` keeps the published URL, and ``key`` is unchanged
    (switching between the web and a local mirror does not re-encode anything). A path that
    would leave DIR is an ``invalid-url`` error row, a missing file ``not-found`` unless the row
    has ``alt_locations`` (Audubon Core's other versions) of which one is a file under a root, or
    a URL outside them (then downloaded): that one is the row's location. Every other
    attribute (``name``, ``report``, ...) is the wrapped source's.
    """

    def __init__(self, inner: Source, roots: Mapping[str, str]):
        self.inner = inner
        checked: list[tuple[str, str]] = []
        for prefix, directory in roots.items():
            if not prefix:
                raise SourceError("--media-root: empty PREFIX", None)
            d = os.path.abspath(os.path.expanduser(directory))
            if not os.path.isdir(d):
                raise SourceError(f"--media-root {prefix}={directory}: {d} is not a folder", directory)
            checked.append((prefix, d))
        self.roots = sorted(checked, key=lambda pd: len(pd[0]), reverse=True)

    @property
    def name(self) -> str:
        return self.inner.name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def __repr__(self) -> str:
        return f"MediaRootSource({self.inner!r}, {dict(self.roots)!r})"

    def scan(self) -> Iterator[pa.RecordBatch]:
        for batch in self.inner.scan():
            yield self._map(batch)

    def _map(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        n = batch.num_rows
        loc = batch.column("location")
        names = batch.schema.names
        err = batch.column("error_reason") if "error_reason" in names else pa.nulls(n, pa.string())
        hit = pa.array([False] * n)
        for prefix, _ in self.roots:
            hit = pc.or_(hit, pc.fill_null(pc.starts_with(loc, prefix), False))
        hit = pc.and_(hit, pc.is_null(err))
        idx = pc.indices_nonzero(hit).to_pylist()
        if not idx:
            return batch
        locations = loc.to_pylist()
        media = batch.column("mediaURL").to_pylist() if "mediaURL" in names else [None] * n
        sizes = batch.column("size").to_pylist()
        mtimes = batch.column("mtime").to_pylist()
        reasons = err.to_pylist()
        details = batch.column("error_detail").to_pylist() if "error_detail" in names else [None] * n
        alts = batch.column("alt_locations").to_pylist() if "alt_locations" in names else [None] * n
        for i in idx:
            url = locations[i]
            if media[i] is None:
                media[i] = url
            found, why = self._resolve(url)
            if found is not None and found.error_reason is None:
                locations[i], sizes[i], mtimes[i] = found.path, found.size, found.mtime
                continue
            other = self._alternative(url, alts[i])
            if other is not None:
                locations[i], sizes[i], mtimes[i] = other
                continue
            if found is None:
                reasons[i], details[i] = "invalid-url", why
                continue
            locations[i] = found.path
            reasons[i], details[i] = found.error_reason, f"{found.error_detail} (media root for {url})"
        return with_locations(batch, locations, sizes, mtimes, reasons, details, mediaURL=pa.array(media, pa.string()))

    def _resolve(self, url: str) -> tuple[LocalPath | None, str | None]:
        """(the stat of ``url``'s file under its media root, None) or (None, why it maps to none)."""
        prefix, root = next((p, r) for p, r in self.roots if url.startswith(p))
        path, why = map_location(url, prefix, root)
        if path is None:
            return None, why
        return stat_local(path_to_text(path)), None

    def _alternative(self, url: str, alts: str | None) -> tuple[str, int | None, float | None] | None:
        """The first alternative location of a row whose file under the media root is missing
        (Audubon Core's good-quality and thumbnail versions): a file under a media root that
        exists, or an http(s) URL outside every root (downloaded then). Counted in the source's
        report as ``alternative_locations``; None when there is none."""
        for alt in (a.strip() for a in (alts or "").splitlines()):
            if not alt or alt == url:
                continue
            if any(alt.startswith(p) for p, _ in self.roots):
                found, _ = self._resolve(alt)
                if found is None or found.error_reason is not None:
                    continue
                chosen: tuple[str, int | None, float | None] = (found.path, found.size, found.mtime)
            elif is_remote(alt):
                chosen = (alt, None, None)
            else:
                continue
            log.info("%s: no file for %s under the media root; using its alternative %s", self.name, url, alt)
            report = getattr(self.inner, "report", None)
            if isinstance(report, dict):
                report["alternative_locations"] = report.get("alternative_locations", 0) + 1
            return chosen
        return None
