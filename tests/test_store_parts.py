"""The store's shared pieces: atomic files, sorted-id sets and the vector lookup by id."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.store.files import atomic_file, atomic_path, atomic_write_bytes, atomic_write_json
from indexer.store.ids import member, remove, sorted_unique
from indexer.store.vectors import ArrayVectors, SegmentVectors


def test_an_atomic_write_replaces_the_file_or_leaves_it_alone(tmp_path):
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_json(tmp_path / "b.json", {"z": 1, "a": [1, 2]})
    assert (tmp_path / "b.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "z": 1\n}\n'
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"half of two")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"one"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"one"
    atomic_write_bytes(target, b"two", durable=False)
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json"]  # no temporary file left


def test_sorted_id_sets():
    assert sorted_unique([5, 1, 5, 3]).tolist() == [1, 3, 5]
    already = np.array([1, 4, 9], dtype=np.int64)
    assert np.shares_memory(sorted_unique(already), already)  # no copy when it is a set already
    assert member(np.array([9, 2, 1, 10]), already).tolist() == [True, False, True, False]
    assert member(np.array([3]), np.empty(0, np.int64)).tolist() == [False]
    assert remove(already, np.array([4, 7])).tolist() == [1, 9]
    assert remove(already, np.array([7])) is already


def test_both_vector_lookups_agree_and_refuse_unknown_ids():
    rng = np.random.default_rng(0)
    segments = [rng.standard_normal((n, 4)).astype(np.float16) for n in (3, 5, 2)]
    starts, ends, at = [], [], 0
    for s in segments:
        starts.append(at)
        ends.append(at + len(s) - 1)
        at += len(s)
    by_segment = SegmentVectors(starts, ends, lambda j: segments[j], 4)
    all_vectors = np.concatenate(segments)
    ids = np.arange(at)
    shuffled = rng.permutation(at)
    by_array = ArrayVectors(all_vectors[shuffled], ids[shuffled])
    wanted = np.array([9, 0, 4, 4, 3, 2])
    expected = all_vectors[wanted].astype(np.float32)
    assert np.array_equal(by_segment(wanted), expected)
    assert np.array_equal(by_array(wanted), expected)
    for lookup in (by_segment, by_array):  # the rows as stored: float16, unconverted, in order
        got = lookup.stored(wanted)
        assert got.dtype == np.float16 and np.array_equal(got, all_vectors[wanted])
    as_float32 = ArrayVectors(all_vectors.astype(np.float32), ids)
    assert as_float32.stored(wanted).dtype == np.float32
    assert by_segment(np.array([], dtype=np.int64)).shape == (0, 4)
    for lookup in (by_segment, by_array):
        with pytest.raises(KeyError):
            lookup(np.array([1, at]))


def test_float16_rows_convert_exactly_whatever_the_path():
    """Lookups convert float16 rows with FAISS's float16 decoder when they are many and in order,
    with numpy otherwise; both give numpy's cast bit for bit, specials included."""
    from indexer.store.vectors import to_float32

    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 40)).astype(np.float16)
    x[0, :4] = [np.inf, -np.inf, 65504, 6e-8]
    for rows in (x, x[:10], x[::2]):
        dst = np.empty(rows.shape, dtype=np.float32)
        to_float32(rows, dst)
        assert np.array_equal(dst, rows.astype(np.float32))
    ids = np.arange(500, dtype=np.int64) * 2 + 9
    look = ArrayVectors(x, ids)
    for want in (ids, ids[::-1], ids[[3, 1, 400, 2]]):
        assert np.array_equal(look(want), x[(want - 9) // 2].astype(np.float32))
