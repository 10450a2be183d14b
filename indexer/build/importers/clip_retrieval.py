"""clip-retrieval's ``inference`` output: ``img_emb/img_emb_N.npy`` + ``metadata/metadata_N.parquet``.

Row i of ``img_emb_N.npy`` (float16, already normalised) belongs to row i of ``metadata_N.parquet``
(same partition number N); partitions are read in name order. The npy files are memory-mapped and
read a batch at a time alongside the metadata's batches. The id defaults to ``uuid`` (as our export
writes), then ``image_path`` (the file path, or the WebDataset key), ``key``, ``url``; ``url`` doubles as the location when the
image path is not one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from indexer.build.importers.readers import ColumnChoice, FileInfo, ImportColumns, RawBatch, _as_text, settle_columns
from indexer.errors import SourceError
from indexer.locations import path_to_text

__all__ = ["ClipRetrievalReader", "is_clip_retrieval_output"]

_NPY = re.compile(r"^img_emb_(\d+)\.npy$")
_ID_COLUMNS = ("uuid", "image_path", "key", "url", "id")
_VECTOR = "\x00img_emb"


def is_clip_retrieval_output(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "img_emb"))


class ClipRetrievalReader:
    """One clip-retrieval output folder (see the module docstring)."""

    kind = "clip-retrieval"
    declared_model: str | None = None

    def __init__(self, spec: str, columns: ImportColumns | None = None, *, name: str | None = None):
        if not is_clip_retrieval_output(spec):
            raise SourceError(f"{spec} is not clip-retrieval output (no img_emb/ folder)", spec)
        self.folder = os.path.abspath(spec)
        self.name = name or path_to_text(self.folder)
        if columns is not None and columns.vector_column:
            raise SourceError(
                f"{spec}: clip-retrieval's vectors are img_emb/*.npy; --vector-column does not apply", spec
            )
        self.columns = columns or ImportColumns()
        emb_dir = os.path.join(self.folder, "img_emb")
        self._parts: list[tuple[str, str]] = []
        for entry in sorted(os.listdir(emb_dir)):
            m = _NPY.match(entry)
            if not m:
                continue
            meta = os.path.join(self.folder, "metadata", f"metadata_{m.group(1)}.parquet")
            if not os.path.isfile(meta):
                raise SourceError(f"{os.path.join(emb_dir, entry)} has no metadata/metadata_{m.group(1)}.parquet", meta)
            self._parts.append((os.path.join(emb_dir, entry), meta))
        if not self._parts:
            raise SourceError(f"no img_emb_N.npy files in {emb_dir}", emb_dir)

    def __repr__(self) -> str:
        return f"ClipRetrievalReader({self.folder!r}, {len(self._parts)} partitions)"

    def files(self) -> list[FileInfo]:
        import pyarrow.parquet as pq

        out = []
        for npy, meta in self._parts:
            arr = _open_npy(npy)
            try:
                meta_rows = pq.ParquetFile(meta).metadata.num_rows
            except (OSError, pa.ArrowException) as exc:
                raise SourceError(f"cannot read {meta} as Parquet: {exc}", meta) from exc
            if meta_rows != arr.shape[0]:
                raise SourceError(
                    f"{npy} has {arr.shape[0]} vectors but {meta} has {meta_rows} rows: they must be row-aligned", npy
                )
            a, b = os.stat(npy), os.stat(meta)
            out.append(FileInfo(npy, a.st_size + b.st_size, max(a.st_mtime, b.st_mtime), int(arr.shape[0]), meta))
        return out

    def _choice(self, meta: str) -> ColumnChoice:
        import pyarrow.parquet as pq

        schema = pq.read_schema(meta).append(pa.field(_VECTOR, pa.list_(pa.float16())))
        opts = ImportColumns(self.columns.id_column, _VECTOR, self.columns.path_column, self.columns.metadata_columns)
        return settle_columns(schema, meta, opts, id_defaults=_ID_COLUMNS)

    def batches(self, file: FileInfo, rows: int, *, ids_only: bool = False) -> Iterator[RawBatch]:
        import pyarrow.parquet as pq

        assert file.companion is not None
        choice = self._choice(file.companion)
        vectors = _open_npy(file.path)
        wanted = [choice.id] if ids_only else [choice.id, *([choice.location] if choice.location else [])]
        wanted += [] if ids_only else [c for c in choice.metadata if c not in wanted]
        pos = 0
        for batch in pq.ParquetFile(file.companion).iter_batches(batch_size=rows, columns=wanted):
            n = batch.num_rows
            block = np.ascontiguousarray(vectors[pos : pos + n])
            emb = None if ids_only else pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), block.shape[1])
            yield RawBatch(
                file=file.path,
                first_row=pos + 1,
                ids=_as_text(batch.column(choice.id)),
                locations=(
                    _as_text(batch.column(choice.location))
                    if choice.location and not ids_only
                    else pa.nulls(n, pa.string())
                ),
                vectors=emb,
                metadata=pa.Table.from_batches([batch]).select(list(choice.metadata)) if not ids_only else pa.table({}),
                base_dir=self.folder,
            )
            pos += n


def _open_npy(path: str) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read {path} as a numpy array: {exc}", path) from exc
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise SourceError(f"{path} holds a {arr.dtype} array of shape {arr.shape}, not (rows, dimension) floats", path)
    return arr
