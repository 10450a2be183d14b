"""pybioclip's ``bioclip embed`` output: ``{"model": "...", "embeddings": {"<image path>": [floats]}}``.

The file names its model (``hf-hub:imageomics/bioclip-2``), which the import checks against the
declared one. Its vectors are pybioclip's raw image features, not normalised. The image path, as
given on pybioclip's command line, is resolved against the JSON file's folder when relative and
becomes the image's key and location: the same key a folder build gives that file, so building the
folder later (with labels, say) adds the metadata without encoding the images again. The file is
read as a stream (ijson), one batch at a time, never whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pyarrow as pa

from indexer.build.importers.readers import FileInfo, ImportColumns, RawBatch
from indexer.build.sources._common import resolve_local
from indexer.errors import SourceError
from indexer.locations import path_to_text

__all__ = ["PybioclipReader"]


def _numbers(value: object) -> list[float] | None:
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    return value


class PybioclipReader:
    """One ``bioclip embed`` JSON file (see the module docstring)."""

    kind = "pybioclip"

    def __init__(self, spec: str, columns: ImportColumns | None = None, *, name: str | None = None):
        import ijson

        if not os.path.isfile(spec):
            raise SourceError(f"not found: {spec}", spec)
        self.path = os.path.abspath(spec)
        self.name = name or path_to_text(self.path)
        if columns is not None and (columns.id_column or columns.vector_column or columns.metadata_columns):
            raise SourceError(f"{spec}: pybioclip JSON has no columns to choose (image path -> vector)", spec)
        try:
            with open(self.path, "rb") as fh:
                prefixes = {p for p, _, _ in _head_events(ijson.parse(fh))}
            with open(self.path, "rb") as fh:
                models = list(_take(ijson.items(fh, "model"), 1))
        except (ijson.JSONError, UnicodeDecodeError) as exc:
            raise SourceError(f"{spec} is not valid JSON: {exc}", spec) from exc
        if "embeddings" not in prefixes:
            raise SourceError(
                f'{spec} is not pybioclip embed output: expected {{"model": ..., "embeddings": {{path: [...]}}}}', spec
            )
        self.declared_model: str | None = models[0] if models and isinstance(models[0], str) else None

    def __repr__(self) -> str:
        return f"PybioclipReader({self.path!r})"

    def files(self) -> list[FileInfo]:
        st = os.stat(self.path)
        return [FileInfo(self.path, st.st_size, st.st_mtime, None)]

    def batches(self, file: FileInfo, rows: int, *, ids_only: bool = False) -> Iterator[RawBatch]:
        import ijson

        base = os.path.dirname(self.path)
        keys: list[str | None] = []
        vecs: list[list[float] | None] = []
        first = 1
        with open(self.path, "rb") as fh:
            try:
                for image, value in ijson.kvitems(fh, "embeddings", use_float=True):
                    path, _ = resolve_local(str(image), base) if str(image).strip() else (None, None)
                    keys.append(path_to_text(path) if path else None)
                    vecs.append(None if ids_only else _numbers(value))
                    if len(keys) >= rows:
                        yield self._batch(keys, vecs, first, base, ids_only)
                        first += len(keys)
                        keys, vecs = [], []
            except ijson.JSONError as exc:
                raise SourceError(
                    f"{self.path}: malformed JSON after entry {first + len(keys) - 1}: {exc}", self.path
                ) from exc
        if keys:
            yield self._batch(keys, vecs, first, base, ids_only)

    def _batch(self, keys: list, vecs: list, first: int, base: str, ids_only: bool) -> RawBatch:
        ids = pa.array(keys, pa.string())
        return RawBatch(
            file=self.path,
            first_row=first,
            ids=ids,
            locations=ids,
            vectors=None if ids_only else pa.array(vecs, pa.list_(pa.float32())),
            metadata=pa.table({}),
            base_dir=base,
        )


def _head_events(events, limit: int = 64):
    """The first top-level keys' events (enough to see whether ``embeddings`` is there)."""
    for n, (prefix, event, value) in enumerate(events):
        if event == "map_key" and prefix == "":
            yield value, event, value
        if n > limit:
            return


def _take(items, n: int):
    for i, item in enumerate(items):
        if i >= n:
            return
        yield item
