"""WebDataset tar shards: samples, metadata side files, brace patterns, locations read back."""

from __future__ import annotations

import json
import os

import pytest
from imagegen import write_shard

from indexer.build.sources.tar import TarShardSource, expand_braces
from indexer.errors import SourceError
from indexer.locations import parse_location, tar_location
from indexer.media.read import read_location


def rows_of(src) -> list[dict]:
    rows = [r for b in src.scan() for r in b.to_pylist()]
    assert len({r["key"] for r in rows}) == len(rows)
    return rows


def sample_members(prefix: str, n: int) -> dict[str, bytes]:
    out = {}
    for i in range(n):
        k = f"{prefix}{i:04d}"
        out[f"{k}.jpg"] = f"JPEG-{k}".encode()
        out[f"{k}.json"] = json.dumps({"scientific_name": f"Species {i}", "family": "Felidae", "site": i}).encode()
        out[f"{k}.txt"] = f"a photo of species {i}\n".encode()
        out[f"{k}.cls"] = f"{i}\n".encode()
    return out


def test_shard_rows_metadata_and_readable_locations(tmp_path):
    shard = tmp_path / "000.tar"
    members = sample_members("s", 3)
    members["extra/0009.seg.png"] = b"PNG-mask"
    members["extra/0009.jpg"] = b"JPEG-main"
    members["orphan.json"] = b"{}"
    members["notes.md"] = b"# readme"
    write_shard(shard, members)
    src = TarShardSource(shard)
    rows = {r["key"]: r for r in rows_of(src)}
    assert len(rows) == 5
    r = rows[f"tar://{shard}#s0001.jpg"]
    assert r["scientificName"] == "Species 1" and r["family"] == "Felidae"
    assert json.loads(r["extra"]) == {"site": 1, "caption": "a photo of species 1", "class_id": 1}
    assert r["size"] == len(b"JPEG-s0001") and r["mtime"] == 1_700_000_000
    loc = parse_location(r["location"])
    assert loc.shard == str(shard) and loc.member == "s0001.jpg" and loc.offset is not None
    for row in rows.values():
        member = parse_location(row["location"]).member
        assert read_location(row["location"]) == members[member]
    assert src.report["samples_without_image"] == 1 and src.report["image_rows"] == 5


def test_brace_pattern_over_shards(tmp_path):
    for i in range(3):
        write_shard(tmp_path / f"shard-{i:03d}.tar", sample_members(f"x{i}-", 2))
    src = TarShardSource(str(tmp_path / "shard-{000..002}.tar"))
    assert len(src.shards) == 3
    assert len(rows_of(src)) == 6
    with pytest.raises(SourceError) as e:
        TarShardSource(str(tmp_path / "shard-{000..004}.tar"))
    assert "shard-003.tar" in str(e.value)


def test_glob_pattern(tmp_path):
    for i in range(2):
        write_shard(tmp_path / f"g{i}.tar", sample_members(f"g{i}-", 1))
    assert len(rows_of(TarShardSource(str(tmp_path / "g*.tar")))) == 2


def test_compressed_shard(tmp_path):
    shard = tmp_path / "c.tar.gz"
    members = sample_members("c", 4)
    write_shard(shard, members, "w:gz")
    rows = rows_of(TarShardSource(shard))
    assert len(rows) == 4
    for r in reversed(rows):
        loc = parse_location(r["location"])
        assert loc.offset is None
        assert read_location(r["location"]) == members[loc.member]


def test_broken_shard_gives_rows_read_so_far_and_an_error_row(tmp_path):
    good = tmp_path / "good.tar"
    write_shard(good, sample_members("b", 40))
    data = good.read_bytes()
    bad = tmp_path / "bad.tar"
    bad.write_bytes(data[: len(data) // 2 + 100])
    src = TarShardSource(bad)
    rows = rows_of(src)
    errors = [r for r in rows if r.get("error_reason")]
    assert len(errors) == 1 and str(bad) in errors[0]["error_detail"]
    assert 0 < len(rows) - 1 < 40
    assert src.report["bad_shards"] == 1


def test_bad_json_is_counted_and_the_image_kept(tmp_path, caplog):
    shard = tmp_path / "j.tar"
    write_shard(shard, {"a.jpg": b"img", "a.json": b"{not json", "b.jpg": b"img2", "b.json": b"[1, 2]"})
    src = TarShardSource(shard)
    rows = {r["key"].rsplit("#", 1)[1]: r for r in rows_of(src)}
    assert set(rows) == {"a.jpg", "b.jpg"}
    assert rows["a.jpg"].get("extra") is None
    assert json.loads(rows["b.jpg"]["extra"]) == {"json": [1, 2]}
    assert src.report["bad_json"] == 1


def test_odd_member_names_round_trip(tmp_path):
    shard = tmp_path / "odd #1?.tar"
    write_shard(shard, {"dir/with space#x%y.jpg": b"odd"})
    (row,) = rows_of(TarShardSource(str(shard).replace("{", "")))
    assert read_location(row["location"]) == b"odd"
    loc = parse_location(row["location"])
    assert (loc.shard, loc.member) == (str(shard), "dir/with space#x%y.jpg")
    assert tar_location(loc.shard, loc.member, loc.offset, loc.size) == row["location"]


def test_expand_braces():
    assert expand_braces("s/{000..002}.tar") == ["s/000.tar", "s/001.tar", "s/002.tar"]
    assert expand_braces("{a,b}{1..2}") == ["a1", "a2", "b1", "b2"]
    assert expand_braces("x{8..10}") == ["x8", "x9", "x10"]
    assert expand_braces("{a,{b,c}}z") == ["az", "bz", "cz"]
    assert expand_braces("plain{x}.tar") == ["plain{x}.tar"]
    assert expand_braces("{0..6..3}") == ["0", "3", "6"]


def test_missing_shard(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        TarShardSource(tmp_path / "nope.tar")


def test_shard_with_an_undecodable_file_name(tmp_path):
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9-000.tar")
    write_shard(os.fsdecode(raw), {"a.jpg": b"latin"})
    src = TarShardSource(os.fsdecode(raw))
    (row,) = rows_of(src)
    from indexer.locations import path_to_text

    row["location"].encode("utf-8")  # valid UTF-8 text, storable in Parquet/DuckDB
    assert parse_location(row["location"]).shard == path_to_text(raw)
    assert read_location(row["location"]) == b"latin"
