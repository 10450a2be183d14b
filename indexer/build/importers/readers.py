"""Readers of embedding files: Parquet (one file, a folder, globs, many shards), and the choice of kind.

A reader lists its files (:class:`FileInfo`: path, size, mtime, rows when known) and reads one file in
batches (:class:`RawBatch`): the id, the raw location (a path or URL, when a column has one), the
vector column as Arrow, and the metadata columns as they are in the file. Nothing is read whole:
Parquet is read batch by batch (``pyarrow.parquet.ParquetFile.iter_batches``), only the columns used.
The mapping onto the collection's columns and the checks of the vectors are the runner's.

Kinds (:data:`KINDS`): ``parquet`` (``uuid`` + ``emb`` + metadata, as TreeOfLife-200M-Embeddings and
emb-explorer), ``pybioclip`` (``bioclip embed`` JSON, :mod:`.pybioclip`), ``clip-retrieval``
(``img_emb/*.npy`` + ``metadata/*.parquet``, :mod:`.clip_retrieval`).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

from indexer.errors import SourceError
from indexer.locations import path_to_text

__all__ = [
    "KINDS",
    "ID_COLUMNS",
    "VECTOR_COLUMNS",
    "LOCATION_COLUMNS",
    "FileInfo",
    "RawBatch",
    "ColumnChoice",
    "EmbeddingReader",
    "ParquetReader",
    "expand_files",
    "settle_columns",
]

KINDS = ("parquet", "pybioclip", "clip-retrieval")

#: Parquet file metadata key under which bioclip-embed records the model, revision, preprocessing.
EMBEDDINGS_METADATA_KEY = b"bioclip_search.embeddings"

#: Default id columns, first present wins (``--id-column`` overrides).
ID_COLUMNS = ("uuid", "id", "key", "image_id", "image_path", "path", "file_name", "filename", "url", "identifier")
#: Default vector columns, first present wins; else the one list column (``--vector-column`` overrides).
VECTOR_COLUMNS = ("emb", "embedding", "embeddings", "vector", "vectors", "img_emb", "image_embedding", "features")
#: Columns that say where the image is (a path or an http(s) URL), first present wins (``--path-column``).
LOCATION_COLUMNS = (
    "location",
    "path",
    "image_path",
    "file_path",
    "filepath",
    "file_name",
    "filename",
    "image_url",
    "url",
    "img_url",
    "media_url",
    "mediaurl",
    "accessuri",
    "identifier",
)


@dataclass(frozen=True)
class FileInfo:
    """One file of a reader: ``path`` (absolute), ``size`` and ``mtime`` (with those of a companion
    file, for clip-retrieval's metadata), ``rows`` when the file says (Parquet footers, npy headers)."""

    path: str
    size: int
    mtime: float
    rows: int | None = None
    companion: str | None = None

    def signature(self) -> dict:
        return {"size": self.size, "mtime": self.mtime, "rows": self.rows}


@dataclass
class RawBatch:
    """Rows ``first_row .. first_row + n - 1`` (1-based) of ``file``: ``ids`` (strings, null when
    missing), ``locations`` (raw path or URL text, or nulls), ``vectors`` (the Arrow vector column,
    None when only ids were asked for) and ``metadata`` (the file's other columns, as they are)."""

    file: str
    first_row: int
    ids: pa.Array
    locations: pa.Array
    vectors: pa.Array | None
    metadata: pa.Table
    base_dir: str = ""

    @property
    def num_rows(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class ColumnChoice:
    """Which column is the id, the vector and the location; which are metadata."""

    id: str
    vector: str
    location: str | None
    metadata: tuple[str, ...] = field(default_factory=tuple)


class EmbeddingReader(Protocol):
    """What the import runner reads: ``name`` (the source's name in the collection), ``kind``,
    ``declared_model`` (the model the files say they were made with, or None), ``files()`` and
    ``batches(file, rows, ids_only)``. Raises SourceError for a file that cannot be used at all."""

    name: str
    kind: str
    declared_model: str | None

    def files(self) -> list[FileInfo]: ...

    def batches(self, file: FileInfo, rows: int, *, ids_only: bool = False) -> Iterator[RawBatch]: ...


def expand_files(spec: str, suffixes: Sequence[str]) -> list[str]:
    """Absolute paths for a file, a folder (every file with one of ``suffixes`` under it, sorted) or
    a glob / brace pattern (``shards/part-{000..099}.parquet``, ``data/*.parquet``)."""
    from indexer.build.sources.tar import expand_braces

    found: list[str] = []
    missing: list[str] = []
    for name in expand_braces(spec):
        if os.path.isdir(name):
            inside = sorted(
                os.path.join(root, f)
                for root, dirs, files in os.walk(name)
                for f in files
                if f.lower().endswith(tuple(suffixes)) and not f.startswith(".")
            )
            if not inside:
                raise SourceError(f"no {' or '.join(suffixes)} files in {name}", name)
            found += inside
        elif os.path.isfile(name):
            found.append(name)
        elif glob.has_magic(name):
            matched = sorted(p for p in glob.glob(name) if os.path.isfile(p))
            if not matched:
                missing.append(name)
            found += matched
        else:
            missing.append(name)
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise SourceError(f"not found: {', '.join(missing[:3])}{more}", spec)
    out: list[str] = []
    seen: set[str] = set()
    for p in found:
        a = os.path.abspath(p)
        if a not in seen:
            seen.add(a)
            out.append(a)
    return out


def _first(columns: Sequence[str], wanted: Sequence[str]) -> str | None:
    lowered = {c.strip().lower(): c for c in columns}
    return next((lowered[w] for w in wanted if w in lowered), None)


def _named(columns: Sequence[str], name: str, what: str, where: str) -> str:
    if name in columns:
        return name
    by_case = [c for c in columns if c.lower() == name.lower()]
    if by_case:
        return by_case[0]
    raise SourceError(f"{where} has no column {name!r} ({what}); columns: {', '.join(columns)}", where)


def settle_columns(
    schema: pa.Schema,
    where: str,
    options: ImportColumns,
    *,
    id_defaults: Sequence[str] = ID_COLUMNS,
) -> ColumnChoice:
    """The id, vector, location and metadata columns of a file with ``schema`` (SourceError naming the
    file and its columns when the id or the vector column cannot be found)."""
    columns = list(schema.names)
    listed = ", ".join(columns)
    if options.vector_column:
        vector = _named(columns, options.vector_column, "--vector-column", where)
    else:
        vector = _first(columns, VECTOR_COLUMNS)  # type: ignore[assignment]
        if vector is None:
            lists = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)]
            lists += [f.name for f in schema if pa.types.is_large_list(f.type)]
            if len(lists) != 1:
                raise SourceError(
                    f"{where}: which column holds the embeddings? expected one of {', '.join(VECTOR_COLUMNS)} "
                    f"or --vector-column NAME; columns: {listed}",
                    where,
                )
            vector = lists[0]
    rest = [c for c in columns if c != vector]
    if options.id_column:
        ident = _named(rest, options.id_column, "--id-column", where)
    else:
        ident = _first(rest, id_defaults)  # type: ignore[assignment]
        if ident is None:
            raise SourceError(
                f"{where}: which column identifies each image? expected one of {', '.join(id_defaults)} "
                f"or --id-column NAME; columns: {listed}",
                where,
            )
    if options.path_column:
        location: str | None = _named(rest, options.path_column, "--path-column", where)
    else:
        location = _first(rest, LOCATION_COLUMNS)
    if options.metadata_columns is not None:
        metadata = tuple(_named(rest, c, "--metadata-column", where) for c in options.metadata_columns)
    else:
        metadata = tuple(c for c in rest if c not in (ident, location))
    return ColumnChoice(ident, vector, location, metadata)


@dataclass(frozen=True)
class ImportColumns:
    """What the user said about columns: None means detect (see :func:`settle_columns`);
    ``metadata_columns`` None keeps every other column."""

    id_column: str | None = None
    vector_column: str | None = None
    path_column: str | None = None
    metadata_columns: tuple[str, ...] | None = None


def _stat(path: str) -> tuple[int, float]:
    st = os.stat(path)
    return st.st_size, st.st_mtime


def _as_text(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_string(array.type):
        return array
    if pa.types.is_large_string(array.type) or pa.types.is_integer(array.type) or pa.types.is_dictionary(array.type):
        return array.cast(pa.string())
    return pa.array([None if v is None else str(v) for v in array.to_pylist()], pa.string())


def _declared_model(path: str) -> str | None:
    """The model ``bioclip-embed --format parquet`` records in the file's metadata, if any."""
    import json

    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
        info = json.loads(meta.get(EMBEDDINGS_METADATA_KEY, b"null"))
    except (OSError, ValueError, pa.ArrowException):
        return None
    model = info.get("model") if isinstance(info, dict) else None
    return model if isinstance(model, str) and model else None


class ParquetReader:
    """Parquet files of embeddings with their ids and metadata (see the module docstring). A file
    written by ``bioclip-embed`` names its model in its metadata (``bioclip_search.embeddings``)."""

    kind = "parquet"

    def __init__(self, spec: str, columns: ImportColumns | None = None, *, name: str | None = None):
        self.spec = spec
        self.columns = columns or ImportColumns()
        self._paths = expand_files(spec, (".parquet", ".pq"))
        self.name = name or path_to_text(os.path.abspath(spec))
        self._choice: dict[str, ColumnChoice] = {}
        self.declared_model = _declared_model(self._paths[0])

    def __repr__(self) -> str:
        return f"ParquetReader({self.spec!r}, {len(self._paths)} files)"

    def files(self) -> list[FileInfo]:
        import pyarrow.parquet as pq

        out = []
        for p in self._paths:
            try:
                meta = pq.ParquetFile(p).metadata
            except (OSError, pa.ArrowException) as exc:
                raise SourceError(f"cannot read {p} as Parquet: {exc}", p) from exc
            size, mtime = _stat(p)
            out.append(FileInfo(p, size, mtime, meta.num_rows))
        return out

    def choice(self, path: str) -> ColumnChoice:
        import pyarrow.parquet as pq

        if path not in self._choice:
            schema = pq.read_schema(path)
            self._choice[path] = settle_columns(schema, path, self.columns)
        return self._choice[path]

    def batches(self, file: FileInfo, rows: int, *, ids_only: bool = False) -> Iterator[RawBatch]:
        import pyarrow.parquet as pq

        choice = self.choice(file.path)
        wanted = (
            [choice.id] if ids_only else [choice.id, choice.vector, *([choice.location] if choice.location else [])]
        )
        wanted += [] if ids_only else [c for c in choice.metadata if c not in wanted]
        try:
            pf = pq.ParquetFile(file.path)
        except (OSError, pa.ArrowException) as exc:
            raise SourceError(f"cannot read {file.path} as Parquet: {exc}", file.path) from exc
        first = 1
        base = os.path.dirname(file.path)
        try:
            for batch in pf.iter_batches(batch_size=rows, columns=wanted, use_threads=True):
                n = batch.num_rows
                if n == 0:
                    continue
                yield RawBatch(
                    file=file.path,
                    first_row=first,
                    ids=_as_text(batch.column(choice.id)),
                    locations=(
                        _as_text(batch.column(choice.location))
                        if choice.location and not ids_only
                        else pa.nulls(n, pa.string())
                    ),
                    vectors=None if ids_only else batch.column(choice.vector),
                    metadata=pa.Table.from_batches([batch]).select(list(choice.metadata))
                    if not ids_only
                    else pa.table({}),
                    base_dir=base,
                )
                first += n
        except pa.ArrowException as exc:
            raise SourceError(f"cannot read {file.path} (near row {first}): {exc}", file.path) from exc
