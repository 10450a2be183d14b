"""indexer.media.library: images served only from the collection's own sources; thumbnails made once."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
import threading

import pytest
from imagegen import write_shard
from PIL import Image
from test_app_fixtures import build_app_collection, picture_bytes

from indexer.media.library import MediaLibrary, is_within
from indexer.search.engine import Hit


@pytest.fixture(scope="module")
def coll(tmp_path_factory, tiny_model_dir):
    return build_app_collection(tmp_path_factory.mktemp("media"), tiny_model_dir)


@pytest.fixture(scope="module")
def engine(coll):
    from indexer.search.engine import SearchEngine

    return SearchEngine.open(coll.path, device="cpu")


def hit_for(location: str, source: str, **meta) -> Hit:
    return Hit(id=999, score=0.0, location=location, metadata={"source": source, "location": location, **meta})


@pytest.fixture
def lib_root(tmp_path):
    """A library over a private root with one picture, a picture outside it, and a collection dir."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(picture_bytes(1))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(picture_bytes(2))
    coll = tmp_path / "coll"
    coll.mkdir()
    lib = MediaLibrary(coll, {"src": [str(root)]})
    return lib, root, outside, coll


def test_a_picture_in_its_source_gives_a_cached_thumbnail(lib_root):
    lib, root, _, coll = lib_root
    hit = hit_for(str(root / "sub" / "a.png"), "src", size=123, sha256="abc")
    thumb = lib.thumbnail(hit)
    assert isinstance(thumb, bytes)
    im = Image.open(io.BytesIO(thumb))
    assert im.format == "JPEG" and max(im.size) <= 256
    # made once: the second call and another process's library read the cached file
    assert lib.thumbnail(hit) == thumb
    assert lib.made == 1
    files = [p for p in (coll / "cache" / "thumbs").rglob("*") if p.is_file()]
    assert [p.name for p in files] == [f"{lib.thumb_key(hit, 256)}.jpg"]  # no temporary files left
    other = MediaLibrary(coll, {"src": [str(root)]})
    assert other.thumbnail(hit) == thumb
    assert other.made == 0 and other.disk_hits == 1


def test_the_thumbnail_changes_when_the_file_does(lib_root):
    lib, root, _, _ = lib_root
    a = hit_for(str(root / "sub" / "a.png"), "src", size=1, sha256="x")
    b = hit_for(str(root / "sub" / "a.png"), "src", size=2, sha256="y")
    assert lib.thumb_key(a, 256) != lib.thumb_key(b, 256)
    assert lib.thumb_key(a, 256) != lib.thumb_key(a, 1280)


@pytest.mark.parametrize(
    "make_location",
    [
        lambda root, out: str(root / "sub" / ".." / ".." / "outside" / "secret.png"),  # traversal
        lambda root, out: str(root / ".." / "root" / "sub" / "a.png"),  # '..' even when it comes back in
        lambda root, out: str(out / "secret.png"),  # an absolute path elsewhere
        lambda root, out: "/etc/passwd",
        lambda root, out: "sub/a.png",  # relative
        lambda root, out: str(root / "sub" / "a.png") + "\x00.png",
        lambda root, out: "",
        lambda root, out: "file:///etc/passwd",
    ],
)
def test_locations_outside_the_source_show_nothing(lib_root, make_location):
    lib, root, outside, _ = lib_root
    hit = hit_for(make_location(root, outside), "src")
    assert lib.resolve(hit) is None
    assert lib.read(hit) is None
    assert lib.thumbnail(hit) is None
    assert lib.made == 0


def test_an_unknown_source_shows_nothing(lib_root):
    lib, root, _, _ = lib_root
    assert lib.thumbnail(hit_for(str(root / "sub" / "a.png"), "another source")) is None


def test_symlinks_out_of_the_root_show_nothing(lib_root):
    lib, root, outside, _ = lib_root
    (root / "link.png").symlink_to(outside / "secret.png")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    (root / "inside.png").symlink_to(root / "sub" / "a.png")
    assert lib.thumbnail(hit_for(str(root / "link.png"), "src")) is None
    assert lib.thumbnail(hit_for(str(root / "linkdir" / "secret.png"), "src")) is None
    # a symlink that stays inside the root is fine
    assert isinstance(lib.thumbnail(hit_for(str(root / "inside.png"), "src")), bytes)


def test_a_root_of_slash_is_never_accepted(tmp_path):
    lib = MediaLibrary(tmp_path, {"src": ["/"]})
    assert lib.thumbnail(hit_for("/etc/hostname", "src")) is None
    assert not is_within("/etc/hostname", "/")


def test_tar_members_are_read_by_name_inside_the_root(lib_root, tmp_path):
    lib, root, outside, _ = lib_root
    shard = root / "shard-000.tar"
    data = picture_bytes(3)
    with tarfile.open(shard, "w") as tar:
        info = tarfile.TarInfo("imgs/x.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert isinstance(lib.thumbnail(hit_for(f"tar://{shard}#imgs/x.png", "src")), bytes)
    assert lib.thumbnail(hit_for(f"tar://{shard}#imgs/missing.png", "src")) is None
    assert lib.resolve(hit_for(f"tar://{shard}#../../x.png", "src")) is None
    assert lib.resolve(hit_for(f"tar://{shard}", "src")) is None
    outside_shard = outside / "s.tar"
    outside_shard.write_bytes(shard.read_bytes())
    assert lib.resolve(hit_for(f"tar://{outside_shard}#imgs/x.png", "src")) is None


def test_remote_images_come_from_the_download_cache_or_by_url(lib_root):
    lib, root, outside, coll = lib_root
    url = "https://example.org/media/1.jpg"
    hit = hit_for(url, "web")
    assert lib.thumbnail(hit) == url  # not downloaded: the browser shows it by URL
    digest = hashlib.sha256(url.encode()).hexdigest()
    cached = coll / "cache" / "media" / digest[:2] / digest
    cached.parent.mkdir(parents=True)
    cached.write_bytes(picture_bytes(4, "JPEG"))
    ref = lib.resolve(hit)
    assert ref.kind == "cached" and ref.url == url
    assert isinstance(lib.thumbnail(hit), bytes)


def test_a_cache_entry_that_links_out_of_the_cache_is_not_used(lib_root):
    lib, root, outside, coll = lib_root
    url = "https://example.org/media/2.jpg"
    digest = hashlib.sha256(url.encode()).hexdigest()
    cached = coll / "cache" / "media" / digest[:2] / digest
    cached.parent.mkdir(parents=True)
    cached.symlink_to(outside / "secret.png")
    assert lib.thumbnail(hit_for(url, "web")) == url


def test_without_write_permission_thumbnails_stay_in_memory(tmp_path, caplog):
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.png").write_bytes(picture_bytes(5))
    coll = tmp_path / "coll"
    (coll / "cache").mkdir(parents=True)
    (coll / "cache" / "thumbs").write_text("a file where the folder should be")  # unwritable, even for root
    lib = MediaLibrary(coll, {"src": [str(root)]})
    hit = hit_for(str(root / "a.png"), "src")
    with caplog.at_level(logging.WARNING, logger="indexer.media"):
        first = lib.thumbnail(hit)
    assert isinstance(first, bytes)
    assert "in memory" in caplog.text
    assert lib.thumbnail(hit) == first
    assert lib.made == 1 and lib.memory_hits == 1


def test_a_picture_that_cannot_be_decoded_shows_nothing_and_is_not_retried(lib_root):
    lib, root, _, _ = lib_root
    (root / "bad.jpg").write_bytes(b"not an image")
    hit = hit_for(str(root / "bad.jpg"), "src")
    assert lib.thumbnail(hit) is None
    assert lib.thumbnail(hit) is None
    assert lib.made == 0


def test_concurrent_sessions_make_a_thumbnail_once(lib_root):
    lib, root, _, _ = lib_root
    hit = hit_for(str(root / "sub" / "a.png"), "src")
    out = []
    threads = [threading.Thread(target=lambda: out.append(lib.thumbnail(hit))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lib.made == 1
    assert len(set(out)) == 1 and isinstance(out[0], bytes)


def test_detail_image_is_larger_but_bounded(lib_root):
    lib, root, _, _ = lib_root
    big = root / "big.png"
    Image.new("RGB", (3000, 2000), (10, 200, 30)).save(big)
    im = Image.open(io.BytesIO(lib.detail_image(hit_for(str(big), "src"))))
    assert max(im.size) == 1280


def test_link_prefers_the_published_media_url(lib_root):
    lib, root, _, _ = lib_root
    assert lib.link(hit_for("/x/a.png", "src")) == "/x/a.png"
    assert lib.link(hit_for("/x/a.png", "src", mediaURL="https://m.org/a.png")) == "https://m.org/a.png"


# -- against a built collection -------------------------------------------------------------


def test_source_roots_of_a_folder_collection(engine, coll):
    roots = engine.source_roots()
    assert roots == {str(coll.images): (str(coll.images),)}


def test_every_image_of_a_built_collection_has_a_thumbnail(engine, coll, tmp_path):
    lib = MediaLibrary.for_engine(engine, thumbs_dir=tmp_path / "thumbs")
    hits = engine.get(range(engine.info()["images"]))
    assert len(hits) == 12
    assert all(isinstance(lib.thumbnail(h), bytes) for h in hits)
    assert lib.made == 12


def test_a_source_named_otherwise_gets_the_folder_its_images_share(tmp_path, tiny_model_dir):
    from indexer.build import BuildOptions, build
    from indexer.build.sources import FolderSource
    from indexer.search.engine import SearchEngine

    folder = tmp_path / "pics"
    (folder / "x").mkdir(parents=True)
    (folder / "y").mkdir()
    (folder / "x" / "1.png").write_bytes(picture_bytes(1))
    (folder / "y" / "2.png").write_bytes(picture_bytes(2))
    build(
        tmp_path / "c",
        [FolderSource(folder, name="sample")],
        model_name=f"local-dir:{tiny_model_dir}",
        device="cpu",
        options=BuildOptions(build_index=False, workers=0),
    )
    engine = SearchEngine.open(tmp_path / "c", device="cpu")
    assert engine.source_roots() == {"sample": (str(folder),)}
    lib = MediaLibrary.for_engine(engine)
    assert all(isinstance(lib.thumbnail(h), bytes) for h in engine.get([0, 1]))
    # a row of that source pointing elsewhere still shows nothing
    assert lib.thumbnail(hit_for(str(tmp_path / "c" / "collection.json"), "sample")) is None
    assert os.path.isdir(tmp_path / "c" / "cache" / "thumbs")


def test_a_source_added_later_is_served_after_the_engine_moves_on(tmp_path, tiny_model_dir):
    from indexer.build import BuildOptions, build
    from indexer.build.sources import FolderSource
    from indexer.search.engine import SearchEngine

    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "1.png").write_bytes(picture_bytes(1))
    (second / "2.png").write_bytes(picture_bytes(2))
    opts = BuildOptions(build_index=False, workers=0)
    build(tmp_path / "c", [FolderSource(first)], model_name=f"local-dir:{tiny_model_dir}", device="cpu", options=opts)
    engine = SearchEngine.open(tmp_path / "c", device="cpu", refresh_interval=None)
    lib = MediaLibrary.for_engine(engine)
    assert set(lib.roots) == {str(first)}
    build(
        tmp_path / "c",
        [FolderSource(first), FolderSource(second)],
        model_name=f"local-dir:{tiny_model_dir}",
        device="cpu",
        options=opts,
    )
    assert engine.refresh()
    (new,) = [h for h in engine.get(range(5)) if h.location.endswith("2.png")]
    assert isinstance(lib.thumbnail(new), bytes)
    assert set(lib.roots) == {str(first), str(second)}


def test_a_tar_shard_collection_shows_thumbnails_and_detail_images(tmp_path, tiny_model_source):
    """Built from real shards (one uncompressed: seekable locations with ?offset=&size=; one
    compressed), in a folder whose name is percent-encoded in the locations, and shown through the
    app's media layer."""
    from indexer.build import BuildOptions, build
    from indexer.build.sources import TarShardSource
    from indexer.search.engine import SearchEngine

    folder = tmp_path / "shards 100%"
    folder.mkdir()
    plain = {f"s{i}.png": picture_bytes(10 + i) for i in range(3)}
    packed = {f"t{i}.png": picture_bytes(20 + i) for i in range(2)}
    write_shard(folder / "shard-000.tar", plain)
    write_shard(folder / "shard-001.tar.gz", packed, "w:gz")
    coll = tmp_path / "shards.coll"
    report = build(
        coll,
        [TarShardSource(str(folder / "shard-*"))],
        model_name=tiny_model_source,
        device="cpu",
        options=BuildOptions(workers=0),
    )
    assert report.encoded == 5 and report.failed == 0
    engine = SearchEngine.open(coll, device="cpu")
    lib = MediaLibrary.for_engine(engine)
    hits = engine.browse(k=10).hits
    assert len(hits) == 5
    assert sum("?offset=" in h.location for h in hits) == 3
    for hit in hits:
        thumb = lib.thumbnail(hit)
        assert isinstance(thumb, bytes), hit.location
        assert Image.open(io.BytesIO(thumb)).format == "JPEG"
        assert isinstance(lib.detail_image(hit), bytes), hit.location
        assert lib.read(hit) == {**plain, **packed}[hit.location.rsplit("#", 1)[1]]
