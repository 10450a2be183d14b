"""A column of embeddings -> checked, L2-normalised float32 rows, one reason per unusable row.

Accepted: Arrow lists, large lists or fixed-size lists of float16, float32 or float64 (Parquet
``list<float16>`` as in TreeOfLife-200M-Embeddings, ``fixed_size_list<float32>`` as pyarrow writes
from numpy). A row is unusable when it is null (``no-vector``), has another length than the model's
dimension (``wrong-dimension``), holds NaN (``nan``) or infinite values (``infinite``), or is all
zeros (``zero-vector``): such rows become failures and the import goes on. A whole column of the
wrong length, or of a type that holds no numbers, is a file-level :class:`SourceError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indexer.errors import SourceError

__all__ = ["CheckedVectors", "check_vectors", "check_vector_type", "UNIT_TOLERANCE"]

#: A row whose L2 norm is within this of 1 counts as already normalised and is kept as it is (float16
#: storage of a unit vector is within ~1e-3 of 1, and dividing it by its norm again would only move
#: its float16 rounding: an exported collection imports back bit for bit); anything further was not
#: normalised by whoever wrote the file and is divided by its norm.
UNIT_TOLERANCE = 2e-3


@dataclass
class CheckedVectors:
    """``vectors`` (n, d) float32, unit rows where ``reasons[i]`` is None (zeros elsewhere);
    ``details[i]`` says what is wrong with row i; ``renormalised`` counts usable rows that were
    not unit length, with the smallest and largest norm seen among them."""

    vectors: np.ndarray
    reasons: list[str | None]
    details: list[str | None]
    renormalised: int = 0
    norm_range: tuple[float, float] | None = None
    bad: int = field(default=0)


def check_vector_type(t: pa.DataType, dimension: int, where: str, column: str) -> None:
    """Raise SourceError unless ``t`` is a list type of floats whose fixed size (if any) is ``dimension``."""
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise SourceError(f"{where}: column {column!r} is {t}, not a list of numbers (an embedding per row)", where)
    value = t.value_type
    if not (pa.types.is_floating(value) or pa.types.is_integer(value)):
        raise SourceError(f"{where}: column {column!r} holds {value} values, not numbers", where)
    if pa.types.is_fixed_size_list(t) and t.list_size != dimension:
        raise SourceError(
            f"{where}: column {column!r} holds {t.list_size}-d vectors, but the model gives {dimension}-d vectors "
            "(wrong --model, or the wrong column?)",
            where,
        )


def check_vectors(column: pa.Array | pa.ChunkedArray, dimension: int, where: str, first_row: int) -> CheckedVectors:
    """Check and normalise one batch of the vector column (see the module docstring).

    ``where`` names the file and ``first_row`` is the 1-based number of the batch's first row in
    it, for the details. Raises SourceError when no row has the model's dimension and every
    non-null row has one other length (the whole column is of another model).
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    reasons: list[str | None] = [None] * n
    details: list[str | None] = [None] * n
    out = np.zeros((n, dimension), dtype=np.float32)
    lengths = pc.list_value_length(column)
    ok_len = pc.fill_null(pc.equal(lengths, dimension), False)
    ok_mask = ok_len.to_numpy(zero_copy_only=False)
    if n and not ok_mask.any():
        distinct = pc.unique(pc.drop_null(lengths)).to_pylist()
        if len(distinct) == 1:
            raise SourceError(
                f"{where}: the vectors are {distinct[0]}-d, but the model gives {dimension}-d vectors "
                "(wrong --model, or the wrong column?)",
                where,
            )
    if ok_mask.any():
        values = column.filter(ok_len).flatten().to_numpy(zero_copy_only=False)
        out[ok_mask] = np.asarray(values, dtype=np.float32).reshape(-1, dimension)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    length_list = lengths.to_pylist() if not ok_mask.all() else None
    for i in np.flatnonzero(~ok_mask):
        row = first_row + int(i)
        if not valid[i]:
            reasons[i], details[i] = "no-vector", f"{where}, row {row}: no vector"
        else:
            reasons[i] = "wrong-dimension"
            details[i] = f"{where}, row {row}: {length_list[i]} values, the model gives {dimension}"  # type: ignore[index]
    finite = np.isfinite(out).all(axis=1)
    for i in np.flatnonzero(~finite & ok_mask):
        row = first_row + int(i)
        if np.isnan(out[i]).any():
            reasons[i], details[i] = "nan", f"{where}, row {row}: the vector holds NaN"
        else:
            reasons[i], details[i] = "infinite", f"{where}, row {row}: the vector holds infinite values"
        out[i] = 0
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", out, out, dtype=np.float64))
    usable = ok_mask & finite
    zero = usable & ~(norms > 1e-30)
    for i in np.flatnonzero(zero):
        reasons[i], details[i] = "zero-vector", f"{where}, row {first_row + int(i)}: the vector is all zeros"
    usable &= ~zero
    result = CheckedVectors(out, reasons, details, bad=int(n - usable.sum()))
    if usable.any():
        off = usable & (np.abs(norms - 1.0) > UNIT_TOLERANCE)
        result.renormalised = int(off.sum())
        if result.renormalised:
            result.norm_range = (float(norms[off].min()), float(norms[off].max()))
            out[off] /= norms[off, None].astype(np.float32)
    return result
