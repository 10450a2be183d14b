"""indexer.locations: the one parser and formatter of every kind of location, and the text form of paths."""

from __future__ import annotations

import os
import random

import duckdb
import pytest

from indexer.errors import LocationError
from indexer.locations import (
    LocalFile,
    RemoteUrl,
    TarMember,
    TarShard,
    file_name,
    is_remote,
    kind_sql,
    local_path,
    parse_location,
    path_to_text,
    shard_location,
    tar_key,
    tar_location,
    text_to_path,
)

# -- kinds -----------------------------------------------------------------------------------------


def test_every_kind_parses_and_formats_back():
    shard = "/data/shards 2024/000%.tar"
    seek = tar_location(shard, "dir/ä b.jpg", 1536, 4096)
    assert seek == "tar:///data/shards%202024/000%25.tar?offset=1536&size=4096#dir/%C3%A4%20b.jpg"
    assert parse_location(seek) == TarMember(shard, "dir/ä b.jpg", 1536, 4096)
    assert str(parse_location(seek)) == seek and parse_location(seek).seekable
    stream = tar_location(shard, "dir/ä b.jpg")
    assert parse_location(stream) == TarMember(shard, "dir/ä b.jpg") and stream == tar_key(shard, "dir/ä b.jpg")
    assert parse_location(seek).key == stream
    assert parse_location(shard_location(shard)) == TarShard(shard)
    assert parse_location("/a/b:c.jpg") == LocalFile("/a/b:c.jpg")
    assert parse_location("file:///a/b%20c.jpg") == LocalFile("/a/b c.jpg")
    url = parse_location("HTTPS://Media.Example.org:8443/a.jpg?x=1")
    assert isinstance(url, RemoteUrl) and url.host == "media.example.org:8443" and url.scheme == "https"


def test_undecodable_names_survive_a_tar_location():
    shard = path_to_text(os.fsdecode(b"/d/caf\xe9"))
    member = os.fsdecode(b"x\xff.jpg")
    loc = parse_location(tar_location(shard, member, 0, 1))
    assert isinstance(loc, TarMember) and (loc.shard, loc.member) == (shard, member)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tar://",
        "tar:///a.tar?offset=1&size=2",
        "tar:///a.tar#",
        "tar:///a.tar?offset=zz&size=1#a.jpg",
        "tar:///a.tar?offset=-1&size=1#a.jpg",
        "http:///no-host.jpg",
        "ftp://example.org/a.jpg",
        "file://elsewhere/a.jpg",
    ],
)
def test_what_is_not_a_location_is_a_location_error(text):
    with pytest.raises(LocationError):
        parse_location(text)
    assert issubclass(LocationError, ValueError)


def test_helpers_answer_from_the_parse():
    seek = tar_location("/s/000.tar", "a/b.jpg", 512, 10)
    assert local_path(seek) == "/s/000.tar" and local_path("/x/y.jpg") == "/x/y.jpg"
    assert local_path("https://e.org/a.jpg") is None and local_path("tar://") is None
    assert file_name(seek) == "b.jpg" and file_name("https://e.org/m/a.jpg?size=2") == "a.jpg"
    assert file_name("/x/y.jpg") == "y.jpg" and file_name(None) == ""
    assert is_remote("Https://e.org/a") and not is_remote("/https://x") and not is_remote("http://")


def test_kind_sql_agrees_with_the_parser():
    values = ["/a.jpg", "https://e.org/a.jpg", "HTTP://E.ORG/b", tar_location("/s.tar", "a", 0, 1), "rel/x.jpg"]
    con = duckdb.connect()
    got = [r[0] for r in con.execute(f"SELECT {kind_sql('v')} FROM unnest(?) AS t(v)", [values]).fetchall()]
    kinds = {LocalFile: "file", RemoteUrl: "url", TarMember: "tar", TarShard: "tar"}
    assert got == [kinds[type(parse_location(v))] for v in values]


# -- text form of paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "/data/photos/IMG_0001.JPG",
        "/d/Épervier d'Europe/ßø.png",
        "/d/100%.jpg",
        "/d/a%E9.jpg",
        "/d/%25%",
        "/d/日本.tif",
        "",
    ],
)
def test_ordinary_paths_are_unchanged(name):
    assert path_to_text(name) == name
    assert text_to_path(name) == name


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"/d/caf\xe9.jpg", "/d/caf%%E9.jpg"),
        (b"/d/a%%b", "/d/a%%25%b"),
        (b"/d/%%%", "/d/%%25%%25%"),
        (b"/d/%\xff", "/d/%%%FF"),
        (b"/d/%%E9", "/d/%%25%E9"),
        (b"/d/\xed\xa0\x80.jpg", "/d/%%ED%%A0%%80.jpg"),  # an encoded surrogate is not UTF-8
    ],
)
def test_escaped_forms(raw, text):
    assert path_to_text(raw) == text
    assert path_to_text(os.fsdecode(raw)) == text
    assert os.fsencode(text_to_path(text)) == raw


def test_random_bytes_round_trip():
    """Seeded property test: any file name bytes -> UTF-8 text -> the same bytes; distinct in, distinct out."""
    rng = random.Random(20240601)
    alphabet = [
        b"%",
        b"%%",
        b"a",
        b"/",
        b"E9",
        b"%%25",
        b"\xe9",
        b"\xff",
        b"\x80",
        b"\xc3\xa9",
        b"\xe6\x97\xa5",
        b"\xf0\x9f\x90\x9f",
        b"\xc3",
        b"\xed\xb2\x80",
        b" ",
    ]
    seen: dict[str, bytes] = {}
    for _ in range(3000):
        if rng.random() < 0.5:
            raw = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        else:
            raw = bytes(rng.choice([b for b in range(1, 256) if b != 0x2F]) for _ in range(rng.randint(0, 20)))
        text = path_to_text(raw)
        text.encode("utf-8")  # valid UTF-8
        assert os.fsencode(text_to_path(text)) == raw
        assert seen.setdefault(text, raw) == raw  # injective
        try:
            plain = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if "%%" not in plain:
            assert text == plain


def test_text_to_path_accepts_raw_os_paths():
    raw = os.fsdecode(b"/d/caf\xe9.jpg")
    assert text_to_path(raw) == raw
