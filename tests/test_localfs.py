"""indexer.media.localfs: walking real folder trees (links, loops, junk, odd names) and reading files safely."""

from __future__ import annotations

import itertools
import os
import pickle
import random
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from indexer.errors import FetchError, SourceError
from indexer.locations import path_to_text, text_to_path
from indexer.media.localfs import (
    IMAGE_EXTENSIONS,
    FileEntry,
    FileProblem,
    SkippedLink,
    read_file,
    walk_images,
)

T = TypeVar("T")
NOBODY = 65534


# -- helpers -------------------------------------------------------------------------------------


def make(root: Path, relpath: str, data: bytes = b"img") -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def walk(root, limit: int = 10_000, **kwargs) -> list[FileEntry | FileProblem]:
    """The whole walk, bounded: a walk that loops fails the test instead of hanging it."""
    results = list(itertools.islice(walk_images(root, **kwargs), limit + 1))
    assert len(results) <= limit, "the walk did not end"
    return results


def relpaths(results) -> list[str]:
    return [r.relpath for r in results]


def problems(results) -> dict[str, str]:
    return {r.relpath: r.reason for r in results if isinstance(r, FileProblem)}


def fetch_reason(path, **kwargs) -> str:
    with pytest.raises(FetchError) as info:
        read_file(path, **kwargs)
    assert info.value.stage == "fetch"
    return info.value.reason


def unprivileged(fn: Callable[[], T]) -> T:
    """Run ``fn`` without root's permission override: in a forked child as ``nobody`` when we are
    root (tests often run as root in containers, where chmod 000 stops nothing), else directly.
    ``fn``'s result must pickle."""
    if os.geteuid() != 0:
        return fn()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            payload = pickle.dumps(("ok", fn()))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            payload = pickle.dumps(("error", f"{type(exc).__name__}: {exc}"))
        with os.fdopen(write_end, "wb") as out:
            out.write(payload)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        payload = inp.read()
    os.waitpid(pid, 0)
    status, value = pickle.loads(payload)
    assert status == "ok", value
    return value


@pytest.fixture
def shared_tmp(tmp_path):
    """A folder the unprivileged child can reach: pytest's tmp_path lives under a 0700 folder of
    root's, so when we are root use a fresh world-traversable folder instead (removed afterwards)."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="test-localfs-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for dirpath, dirnames, _ in os.walk(folder):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
        shutil.rmtree(folder)


def require_enforced_permissions(folder: Path) -> None:
    probe = make(folder, "probe.bin")
    probe.chmod(0)

    def can_read() -> bool:
        try:
            with open(probe, "rb"):
                return True
        except PermissionError:
            return False

    try:
        if unprivileged(can_read):
            pytest.skip("file permissions are not enforced here (not even for user nobody)")
    finally:
        probe.unlink()


# -- walking ---------------------------------------------------------------------------------------


def test_walk_is_recursive_sorted_and_filters_extensions(tmp_path):
    # Created in reverse order: the result must not depend on creation or directory order.
    for rel in [
        "z.GIF",
        "c.JPEG",
        "b/2.jpg",
        "a/z/3.tif",
        "a/1.PNG",
        "notes.txt",
        "a/readme.md",
        "d/e.WebP",
        "x.bmp",
        "y.tiff",
        "w.jpg.txt",
    ]:
        make(tmp_path, rel)
    result = walk(tmp_path)
    assert all(isinstance(r, FileEntry) for r in result)
    assert relpaths(result) == ["a/1.PNG", "a/z/3.tif", "b/2.jpg", "c.JPEG", "d/e.WebP", "x.bmp", "y.tiff", "z.GIF"]
    assert relpaths(walk(tmp_path)) == relpaths(result)  # deterministic


def test_order_is_by_name_bytes_not_creation(tmp_path):
    names = [f"{i:03d}.jpg" for i in range(50)]
    for name in random.Random(1).sample(names, len(names)):
        make(tmp_path, name)
    assert relpaths(walk(tmp_path)) == sorted(names)


def test_entry_fields(tmp_path):
    path = make(tmp_path, "sub/specimen.jpg", b"x" * 1234)
    os.utime(path, (1_600_000_000.5, 1_600_000_000.5))
    (entry,) = walk(tmp_path)
    assert entry == FileEntry(str(path), "sub/specimen.jpg", 1234, 1_600_000_000.5)
    assert os.path.isabs(entry.path)


def test_relative_root_gives_absolute_paths(tmp_path, monkeypatch):
    make(tmp_path, "photos/a.jpg")
    monkeypatch.chdir(tmp_path)
    (entry,) = walk("photos")
    assert entry.path == str(tmp_path / "photos" / "a.jpg") and entry.relpath == "a.jpg"


def test_custom_extensions_any_case_with_or_without_dot(tmp_path):
    make(tmp_path, "a.JPG")
    make(tmp_path, "b.png")
    make(tmp_path, "c.Jp2")
    assert relpaths(walk_images(tmp_path, ["jp2", ".JPG"])) == ["a.JPG", "c.Jp2"]
    assert ".jpg" in IMAGE_EXTENSIONS and ".tiff" in IMAGE_EXTENSIONS


def test_hidden_files_and_macos_junk_are_skipped(tmp_path):
    for rel in [
        "keep.jpg",
        ".hidden.jpg",
        "._keep.jpg",
        ".git/objects/x.png",
        "__MACOSX/._keep.jpg",
        "__MACOSX/sub/real-looking.jpg",
        "sub/.DS_Store",
        "sub/._a.jpg",
        "sub/a.jpg",
        ".thumbs/t.jpg",
    ]:
        make(tmp_path, rel)
    assert relpaths(walk(tmp_path)) == ["keep.jpg", "sub/a.jpg"]


def test_missing_or_file_root_is_a_source_error(tmp_path):
    with pytest.raises(SourceError):
        walk(tmp_path / "nope")
    with pytest.raises(SourceError):
        walk(make(tmp_path, "a.jpg"))


def test_symlinks_out_of_the_folder_are_skipped_and_said_unless_followed(tmp_path):
    outside = tmp_path / "outside"
    make(outside, "o1.jpg", b"12345")
    root = tmp_path / "root"
    make(root, "real.jpg")
    make(root, "sub/inner.jpg", b"123")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "alias.jpg").symlink_to(outside / "o1.jpg")
    (root / "inside.jpg").symlink_to(root / "sub" / "inner.jpg")  # a link within the folder
    (root / "same").symlink_to("sub", target_is_directory=True)
    (root / "notes.txt").symlink_to(outside / "o1.jpg")  # not an image name: passed over
    result = walk(root)
    skipped = {r.relpath: r for r in result if isinstance(r, SkippedLink)}
    assert sorted(skipped) == ["alias.jpg", "linked"]
    assert skipped["linked"].is_dir and skipped["linked"].target == str(outside)
    assert skipped["alias.jpg"].target == str(outside / "o1.jpg")
    entries = [r for r in result if isinstance(r, FileEntry)]
    assert [r.relpath for r in entries] == ["inside.jpg", "real.jpg", "same/inner.jpg", "sub/inner.jpg"]
    assert entries[0].size == 3 and entries[0].path == str(root / "inside.jpg")

    followed: list[str] = []
    result = walk(root, follow_symlinks=True, followed=followed)
    assert relpaths(result) == [
        "alias.jpg",
        "inside.jpg",
        "linked/o1.jpg",
        "real.jpg",
        "same/inner.jpg",
        "sub/inner.jpg",
    ]
    alias = result[0]
    assert isinstance(alias, FileEntry) and alias.size == 5  # the target's size
    assert result[2].path == str(root / "linked" / "o1.jpg")  # not resolved: keys stay stable
    assert sorted(followed) == sorted([str(outside / "o1.jpg"), str(outside)])


def test_folder_reachable_twice_is_listed_twice_without_looping(tmp_path):
    outside = tmp_path / "outside"
    make(outside, "o.jpg")
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").symlink_to(outside)
    (root / "b").symlink_to(outside)
    assert relpaths(walk(root, follow_symlinks=True)) == ["a/o.jpg", "b/o.jpg"]
    make(root, "inner/i.jpg")
    (root / "c").symlink_to(root / "inner")
    assert relpaths(walk(root)) == ["a", "b", "c/i.jpg", "inner/i.jpg"]  # a, b: not followed


def test_broken_symlink(tmp_path):
    make(tmp_path, "ok.jpg")
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "deleted.jpg")
    (tmp_path / "broken-dir").symlink_to(tmp_path / "gone")  # no image name: not reported
    result = walk(tmp_path)
    assert problems(result) == {"broken.jpg": "broken-symlink"}
    assert relpaths(result) == ["broken.jpg", "ok.jpg"]
    assert "deleted.jpg" in result[0].detail
    assert fetch_reason(str(tmp_path / "broken.jpg")) == "broken-symlink"


def test_symlink_loop_to_parent_folder(tmp_path):
    make(tmp_path, "a/in-a.jpg")
    make(tmp_path, "top.jpg")
    (tmp_path / "a" / "up").symlink_to("..", target_is_directory=True)
    (tmp_path / "a" / "self").symlink_to(".", target_is_directory=True)
    result = walk(tmp_path)  # must terminate
    assert relpaths(result) == ["a/in-a.jpg", "a/self", "a/up", "top.jpg"]
    assert problems(result) == {"a/self": "symlink-loop", "a/up": "symlink-loop"}


def test_deeper_loop_is_caught(tmp_path):
    make(tmp_path, "a/b/c/x.jpg")
    (tmp_path / "a" / "b" / "c" / "back").symlink_to(tmp_path / "a")
    result = walk(tmp_path)
    assert relpaths(result) == ["a/b/c/back", "a/b/c/x.jpg"]
    assert problems(result) == {"a/b/c/back": "symlink-loop"}


def test_self_referencing_file_symlink(tmp_path):
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    (tmp_path / "ping.png").symlink_to("pong.png")
    (tmp_path / "pong.png").symlink_to("ping.png")
    loops = {"loop.jpg": "symlink-loop", "ping.png": "symlink-loop", "pong.png": "symlink-loop"}
    assert problems(walk(tmp_path)) == loops
    assert fetch_reason(str(tmp_path / "loop.jpg")) == "symlink-loop"


def test_fifo_with_image_name_is_reported_and_never_read(tmp_path):
    fifo = tmp_path / "stuck.jpg"
    os.mkfifo(fifo)
    assert problems(walk(tmp_path)) == {"stuck.jpg": "not-a-regular-file"}
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(fetch_reason(str(fifo))), daemon=True)
    reader.start()
    reader.join(10)
    assert result == ["not-a-regular-file"]  # and it did not block waiting for a writer


def test_unreadable_folder_is_a_problem_and_the_walk_goes_on(shared_tmp):
    require_enforced_permissions(shared_tmp)
    make(shared_tmp, "a/ok.jpg")
    make(shared_tmp, "b-locked/hidden-from-us.jpg")
    make(shared_tmp, "c/ok.jpg")
    (shared_tmp / "b-locked").chmod(0)
    result = unprivileged(lambda: walk(shared_tmp))
    assert relpaths(result) == ["a/ok.jpg", "b-locked", "c/ok.jpg"]
    assert problems(result) == {"b-locked": "permission-denied"}


def test_unreadable_file(shared_tmp):
    require_enforced_permissions(shared_tmp)
    path = make(shared_tmp, "locked.jpg")
    path.chmod(0)

    def attempt() -> tuple[list, str]:
        walked = walk(shared_tmp)  # listed: the walk does not open files
        try:
            read_file(str(path))
        except FetchError as exc:
            return walked, exc.reason
        return walked, "read"

    walked, reason = unprivileged(attempt)
    assert relpaths(walked) == ["locked.jpg"] and isinstance(walked[0], FileEntry)
    assert reason == "permission-denied"


def test_non_utf8_file_name_round_trip(tmp_path):
    raw_name = b"caf\xe9 100%%.jpg"  # Latin-1 e-acute, and a literal double percent
    raw_path = os.path.join(os.fsencode(tmp_path), raw_name)
    with open(raw_path, "wb") as f:
        f.write(b"latin-1 bytes")
    make(tmp_path, "plain.jpg")
    result = walk(tmp_path)
    assert [r.relpath for r in result] == ["caf%%E9 100%%25%.jpg", "plain.jpg"]
    entry = result[0]
    assert isinstance(entry, FileEntry)
    entry.path.encode("utf-8")  # storable as UTF-8 (raises on lone surrogates)
    entry.relpath.encode("utf-8")
    assert os.fsencode(text_to_path(entry.path)) == raw_path
    assert read_file(entry.path) == b"latin-1 bytes"
    assert result[1].relpath == "plain.jpg"


def test_non_utf8_folder_name(tmp_path):
    folder = os.path.join(os.fsencode(tmp_path), b"\xff\xfe-dir")
    os.mkdir(folder)
    with open(os.path.join(folder, b"a.jpg"), "wb") as f:
        f.write(b"x")
    (entry,) = walk(tmp_path)
    assert entry.relpath == "%%FF%%FE-dir/a.jpg"
    assert read_file(entry.path) == b"x"
    # A root given in text form works too.
    assert relpaths(walk(path_to_text(os.fsdecode(folder)))) == ["a.jpg"]


# -- reading ---------------------------------------------------------------------------------------


def test_read_file_returns_exact_bytes(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)  # several read chunks
    path = make(tmp_path, "big.tif", data)
    assert read_file(str(path)) == data
    assert read_file(path) == data  # path-like
    assert read_file(str(make(tmp_path, "empty.jpg", b""))) == b""


def test_read_file_errors(tmp_path):
    assert fetch_reason(str(tmp_path / "missing.jpg")) == "not-found"
    assert fetch_reason(str(make(tmp_path, "f.jpg") / "under-a-file.jpg")) == "not-found"
    (tmp_path / "folder.jpg").mkdir()
    assert fetch_reason(str(tmp_path / "folder.jpg")) == "is-a-directory"


def test_read_file_max_bytes(tmp_path):
    path = str(make(tmp_path, "a.jpg", b"x" * 1000))
    assert read_file(path, max_bytes=1000) == b"x" * 1000
    with pytest.raises(FetchError) as info:
        read_file(path, max_bytes=999)
    assert info.value.reason == "too-large" and "1,000" in info.value.detail


def test_read_file_device_is_not_read():
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    assert fetch_reason("/dev/zero") == "not-a-regular-file"  # would never end


def test_read_file_detail_names_the_path_in_text_form(tmp_path):
    missing = os.path.join(os.fsencode(tmp_path), b"gone-\xe9.jpg")
    with pytest.raises(FetchError) as info:
        read_file(path_to_text(missing))
    assert info.value.reason == "not-found"
    assert "gone-%%E9.jpg" in info.value.detail
    info.value.detail.encode("utf-8")


def test_file_problem_is_a_plain_value(tmp_path):
    (tmp_path / "b.jpg").symlink_to("nowhere.jpg")
    (problem,) = walk(tmp_path)
    assert problem == FileProblem(str(tmp_path / "b.jpg"), "b.jpg", "broken-symlink", problem.detail)
    assert pickle.loads(pickle.dumps(problem)) == problem
    assert stat.S_ISLNK(os.lstat(problem.path).st_mode)
