"""Image sources: what ``bioclip-index build SOURCE...`` reads.

``open_source`` picks the kind of source from what SOURCE is (or from ``source_type``):

- ``folder``: a folder tree of images (optionally with a labels CSV);
- ``dwca``: a Darwin Core Archive (folder with meta.xml, .zip, .tgz/.tar.gz), or a single CSV/TSV
  whose headers are Darwin Core terms (and that has no path/URL column);
- ``manifest``: a CSV, TSV or Parquet file with a path or URL column;
- ``tar``: WebDataset tar shards (a path, a glob or a brace pattern like ``shards/{000..099}.tar``).

``media_roots`` (``--media-root PREFIX=DIR``) applies to every kind.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from collections.abc import Mapping

from indexer.build.sources.base import ALT_COLUMNS, ERROR_COLUMNS, ITEM_COLUMNS, Source
from indexer.build.sources.dwca import DwcaSource
from indexer.build.sources.folder import FolderSource
from indexer.build.sources.manifest import ManifestSource, detect_path_column, manifest_columns
from indexer.build.sources.media_root import MediaRootSource, parse_media_root
from indexer.build.sources.tar import IMAGE_EXTENSIONS, TarShardSource
from indexer.errors import SourceError

__all__ = [
    "Source",
    "FolderSource",
    "DwcaSource",
    "ManifestSource",
    "TarShardSource",
    "MediaRootSource",
    "open_source",
    "parse_media_root",
    "ITEM_COLUMNS",
    "ERROR_COLUMNS",
    "ALT_COLUMNS",
    "SOURCE_TYPES",
]

SOURCE_TYPES = ("folder", "manifest", "dwca", "tar")

_TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".tab", ".parquet", ".pq")


def open_source(
    spec: str,
    *,
    source_type: str | None = None,
    labels: str | None = None,
    path_column: str | None = None,
    media_roots: Mapping[str, str] | None = None,
    name: str | None = None,
    record_license: bool = False,
    follow_symlinks: bool = False,
) -> Source:
    """Return the source that ``spec`` (a path, pattern or URL) names.

    ``labels`` applies to folders, ``path_column`` to manifests (its presence also makes a
    CSV/TSV a manifest rather than a Darwin Core file); ``media_roots`` maps URL prefixes to local
    folders for every kind; ``name`` labels the source in reports (and in Darwin Core keys);
    ``record_license`` lets a Darwin Core record's licence fill in for its images without one.
    ``follow_symlinks`` lets a folder source follow symbolic links that lead outside it.
    Raises SourceError when ``spec`` names nothing usable, or an option does not fit the kind.
    """
    spec = os.fspath(spec)
    kind = source_type or _detect(spec, path_column)
    if kind not in SOURCE_TYPES:
        raise SourceError(f"unknown source type {kind!r} for {spec}; known: {', '.join(SOURCE_TYPES)}", spec)
    if labels is not None and kind != "folder":
        raise SourceError(f"--labels applies to a folder of images; {spec} is a {kind} source", spec)
    if path_column is not None and kind != "manifest":
        raise SourceError(f"--path-column applies to a manifest; {spec} is a {kind} source", spec)
    if record_license and kind != "dwca":
        raise SourceError(
            f"--license-from-record applies to Darwin Core Archives; in a {kind} source each row is an image "
            f"and its license is the image's own ({spec})",
            spec,
        )
    source: Source
    if kind == "folder":
        source = FolderSource(spec, labels=labels, name=name, follow_symlinks=follow_symlinks)
    elif kind == "manifest":
        source = ManifestSource(spec, path_column=path_column, name=name)
    elif kind == "dwca":
        source = DwcaSource(spec, name=name, record_license=record_license)
    else:
        source = TarShardSource(spec, name=name)
    if media_roots:
        source = MediaRootSource(source, media_roots)
    return source


def _is_pattern(spec: str) -> bool:
    return any(ch in spec for ch in "{*?[")


def _detect(spec: str, path_column: str | None = None) -> str:
    if os.path.isdir(spec):
        return "dwca" if os.path.isfile(os.path.join(spec, "meta.xml")) else "folder"
    if not os.path.exists(spec):
        if _is_pattern(spec):
            return "tar"
        raise SourceError(f"source not found: {spec}", spec)
    if zipfile.is_zipfile(spec):
        return "dwca"
    with open(spec, "rb") as fh:
        head = fh.read(512)
    if head[:4] == b"PAR1":
        return "manifest"
    compressed = head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00"
    if compressed or (len(head) >= 262 and head[257:262] == b"ustar"):
        return _tar_kind(spec)
    if spec.lower().endswith(_TABLE_SUFFIXES) or path_column is not None:
        if path_column is not None:
            return "manifest"
        columns = manifest_columns(spec)
        if detect_path_column(columns) is not None:
            return "manifest"
        return "dwca"  # DwcaSource checks for Darwin Core headers and says so if there are none
    raise SourceError(f"cannot tell what kind of source {spec} is; give --source-type", spec)


def _tar_kind(spec: str) -> str:
    """A tar of images (WebDataset shard) or a tarred Darwin Core Archive, from its first members."""
    try:
        with tarfile.open(spec, mode="r|*") as tf:
            for n, member in enumerate(tf):
                base = member.name.rsplit("/", 1)[-1].lower()
                if base == "meta.xml":
                    return "dwca"
                ext = base.rsplit(".", 1)[-1] if "." in base else ""
                if (
                    member.isfile()
                    and (ext in IMAGE_EXTENSIONS or ext in ("json", "cls"))
                    and not base.startswith("._")
                ):
                    return "tar"
                if n >= 64:
                    break
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise SourceError(f"{spec}: not a readable tar archive ({exc})", spec) from exc
    return "dwca"
