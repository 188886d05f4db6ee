"""The local backend beyond the shared contract: it never leaves its root (symbolic links,
hostile keys), keeps its own files out of sight, and maps filesystem failures to the
taxonomy."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.local import LocalStore
from storage_worker.backends.local_fs import META_DIR, TMP_DIR
from storage_worker.backends.local_rules import os_failure
from tests.storage.stores import drain

MIB = 1024 * 1024
SECRET = b"outside the root: never read, never written"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    opened = LocalStore("local", tmp_path / "root")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the root, with a file the store must never reach."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_bytes(SECRET)
    return folder


def snapshot(folder: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every path below `folder` (links not followed): content (files) and mtime."""
    seen: dict[str, tuple[bytes | None, int]] = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        seen[str(path.relative_to(folder))] = (content, st.st_mtime_ns)
    return seen


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def put(store: LocalStore, key: str, data: bytes) -> None:
    await store.put(key, chunks(data), content_type=None, metadata={}, tags={}, sha256=sha256(data))


async def expect_error(code: ErrorCode, call: object) -> FerrymanError:
    assert asyncio.iscoroutine(call)
    with pytest.raises(FerrymanError) as caught:
        await call
    assert caught.value.code is code, caught.value
    return caught.value


def root_of(tmp_path: Path) -> Path:
    return tmp_path / "root"


async def test_a_symlinked_file_is_never_followed(
    store: LocalStore, tmp_path: Path, outside: Path
) -> None:
    link = root_of(tmp_path) / "link.txt"
    link.symlink_to(outside / "secret.txt")
    before = snapshot(outside)

    for call in (
        store.head("link.txt"),
        store.get("link.txt"),
        store.copy("link.txt", "stolen.txt"),
        store.update_metadata("link.txt", metadata={"a": "b"}, tags=None, content_type=None),
        store.delete("link.txt"),
        put(store, "link.txt", b"overwritten"),
    ):
        error = await expect_error(ErrorCode.PERMISSION_DENIED, call)
        assert "symbolic link" in error.message
        assert str(tmp_path) not in error.message

    assert snapshot(outside) == before
    assert link.is_symlink()
    listing = await store.list("", delimiter=None, limit=100, token=None)
    assert listing.objects == []


async def test_a_symlinked_folder_is_never_followed(
    store: LocalStore, tmp_path: Path, outside: Path
) -> None:
    (root_of(tmp_path) / "linked").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)

    for call in (
        store.head("linked/secret.txt"),
        store.get("linked/secret.txt"),
        store.copy("linked/secret.txt", "stolen.txt"),
        store.delete("linked/secret.txt"),
        put(store, "linked/planted.txt", b"planted"),
        put(store, "linked/deeper/planted.txt", b"planted"),
    ):
        await expect_error(ErrorCode.PERMISSION_DENIED, call)
    await put(store, "real/file.txt", b"ok")
    await expect_error(ErrorCode.NOT_FOUND, store.copy("real/file.txt/x", "linked/x.txt"))
    await expect_error(ErrorCode.PERMISSION_DENIED, store.copy("real/file.txt", "linked/x.txt"))

    assert snapshot(outside) == before
    for prefix in ("", "linked/", "linked/sec"):
        listing = await store.list(prefix, delimiter="/", limit=100, token=None)
        assert [found.key for found in listing.objects] == []
        assert listing.prefixes == (["real/"] if prefix == "" else [])


async def test_hostile_keys_are_refused_by_the_backend_too(
    store: LocalStore, tmp_path: Path, outside: Path
) -> None:
    before = snapshot(tmp_path)

    for key in (
        "../outside/secret.txt",
        "a/../../outside/x",
        "/etc/passwd",
        "a\\..\\b",
        "%2e%2e/x",
    ):
        await expect_error(ErrorCode.INVALID_REQUEST, store.head(key))
        await expect_error(ErrorCode.INVALID_REQUEST, put(store, key, b"escaped"))
    await expect_error(
        ErrorCode.INVALID_REQUEST, store.list("../", delimiter=None, limit=10, token=None)
    )

    assert snapshot(tmp_path) == before


async def test_nothing_is_ever_written_outside_the_root(tmp_path: Path, outside: Path) -> None:
    beside = tmp_path / "root-sibling"
    beside.mkdir()
    root = root_of(tmp_path)
    outside_before, beside_before = snapshot(outside), snapshot(beside)
    parent_before = sorted(os.listdir(tmp_path))

    store = LocalStore("local", root)
    try:
        await put(store, "a/b/c.txt", b"x" * (2 * MIB + 3))
        await store.copy("a/b/c.txt", "d/e.txt")
        await store.update_metadata("d/e.txt", metadata={"k": "v"}, tags=None, content_type=None)
        await store.delete("a/b/c.txt")
        with pytest.raises(FerrymanError):
            await store.put(
                "f.txt",
                chunks(b"abc"),
                content_type=None,
                metadata={},
                tags={},
                sha256=sha256(b"x"),
            )
        await store.list("", delimiter="/", limit=10, token=None)
    finally:
        await store.close()

    assert sorted(os.listdir(tmp_path)) == sorted([*parent_before, "root"])
    assert snapshot(outside) == outside_before
    assert snapshot(beside) == beside_before


async def test_objects_lie_at_their_keys_and_the_backend_files_stay_hidden(
    store: LocalStore, tmp_path: Path
) -> None:
    root = root_of(tmp_path)
    await put(store, "docs/report.txt", b"report")

    assert (root / "docs" / "report.txt").read_bytes() == b"report"
    sidecars = [path for path in (root / META_DIR).rglob("*.json")]
    assert len(sidecars) == 1
    assert list((root / TMP_DIR).iterdir()) == []
    for key in (f"{META_DIR}/x.json", f"{TMP_DIR}/x.part"):
        await expect_error(ErrorCode.INVALID_REQUEST, put(store, key, b"x"))
        await expect_error(ErrorCode.INVALID_REQUEST, store.head(key))
    assert (await store.list(".ferryman", delimiter="/", limit=10, token=None)).prefixes == []
    assert (await store.list(f"{META_DIR}/", delimiter=None, limit=10, token=None)).objects == []
    await put(store, f"nested/{META_DIR}/ok.txt", b"only the root's own are reserved")
    assert (await store.head(f"nested/{META_DIR}/ok.txt")).size == 32


async def test_failed_and_cancelled_puts_leave_no_temp_file(
    store: LocalStore, tmp_path: Path
) -> None:
    temp = root_of(tmp_path) / TMP_DIR
    first_sent = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"s" * MIB
        first_sent.set()
        await asyncio.Event().wait()
        yield b""

    async def breaks() -> AsyncIterator[bytes]:
        yield b"b" * (3 * MIB)
        raise ConnectionResetError("the source went away")

    upload = asyncio.create_task(
        store.put(
            "stalled.bin", stalls(), content_type=None, metadata={}, tags={}, sha256=sha256(b"")
        )
    )
    await asyncio.wait_for(first_sent.wait(), timeout=30)
    assert len(list(temp.iterdir())) == 1, "the upload is not streaming to a temp file"
    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upload
    # The source's own OSError is its own: not mistaken for a disk failure.
    with pytest.raises(ConnectionResetError):
        await store.put(
            "broken.bin", breaks(), content_type=None, metadata={}, tags={}, sha256=sha256(b"")
        )

    assert list(temp.iterdir()) == []
    assert not (root_of(tmp_path) / "stalled.bin").exists()
    assert not (root_of(tmp_path) / "broken.bin").exists()


async def test_delete_removes_the_sidecar_and_empty_folders(
    store: LocalStore, tmp_path: Path
) -> None:
    root = root_of(tmp_path)
    await put(store, "a/b/c/d.txt", b"x")
    await put(store, "a/keep.txt", b"y")

    assert await store.delete("a/b/c/d.txt") is True

    assert not (root / "a" / "b").exists()
    assert (root / "a" / "keep.txt").exists()
    assert len(list((root / META_DIR).rglob("*.json"))) == 1


async def test_an_object_and_a_folder_cannot_share_a_name(store: LocalStore) -> None:
    await put(store, "name", b"object")
    await put(store, "folder/inside.txt", b"x")

    await expect_error(ErrorCode.CONFLICT, put(store, "name/below.txt", b"x"))
    await expect_error(ErrorCode.CONFLICT, put(store, "folder", b"x"))
    await expect_error(ErrorCode.NOT_FOUND, store.head("folder"))
    assert await store.delete("folder") is False
    assert await drain((await store.get("name"))[1]) == b"object"


async def test_a_file_placed_by_hand_is_an_object_without_a_description(
    store: LocalStore, tmp_path: Path
) -> None:
    root = root_of(tmp_path)
    await put(store, "doc.txt", b"through the store")
    replacement = root / "hand-made.tmp"
    replacement.write_bytes(b"replaced by hand")
    replacement.replace(root / "doc.txt")
    (root / "manual.txt").write_bytes(b"dropped in")

    replaced = await store.head("doc.txt")
    manual = await store.head("manual.txt")

    # The old sidecar describes other bytes: it is not applied to these.
    assert (replaced.size, replaced.sha256, replaced.version) == (16, None, None)
    assert (manual.size, manual.metadata) == (10, {})
    listing = await store.list("", delimiter=None, limit=10, token=None)
    assert [found.key for found in listing.objects] == ["doc.txt", "manual.txt"]
    copied = await store.copy("manual.txt", "copied.txt")
    assert copied.sha256 == sha256(b"dropped in")


async def test_special_files_are_not_objects(store: LocalStore, tmp_path: Path) -> None:
    os.mkfifo(root_of(tmp_path) / "pipe")

    await expect_error(ErrorCode.NOT_FOUND, asyncio.wait_for(store.head("pipe"), timeout=10))
    assert (await store.list("", delimiter=None, limit=10, token=None)).objects == []
    assert await store.delete("pipe") is False


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
async def test_permissions_refused_by_the_filesystem_are_permission_denied(
    store: LocalStore, tmp_path: Path
) -> None:
    root = root_of(tmp_path)
    await put(store, "locked/file.txt", b"x")
    (root / "locked" / "file.txt").chmod(0)
    (root / "locked").chmod(0o500)
    try:
        read_error = await expect_error(ErrorCode.PERMISSION_DENIED, store.get("locked/file.txt"))
        write_error = await expect_error(
            ErrorCode.PERMISSION_DENIED, put(store, "locked/new.txt", b"x")
        )
    finally:
        (root / "locked").chmod(0o700)
        (root / "locked" / "file.txt").chmod(0o600)

    assert not read_error.retryable
    assert not write_error.retryable
    assert "EACCES" in write_error.message
    assert str(tmp_path) not in write_error.message


async def test_a_segment_too_long_for_the_filesystem_is_invalid(store: LocalStore) -> None:
    error = await expect_error(ErrorCode.INVALID_REQUEST, put(store, "x" * 300 + ".txt", b"x"))

    assert "too long" in error.message


@pytest.mark.parametrize(
    ("number", "writing", "code", "retryable"),
    [
        (errno.ENOSPC, True, ErrorCode.UNAVAILABLE, True),
        (errno.EDQUOT, True, ErrorCode.UNAVAILABLE, True),
        (errno.EIO, False, ErrorCode.UNAVAILABLE, True),
        (errno.EMFILE, True, ErrorCode.UNAVAILABLE, True),
        (errno.EACCES, True, ErrorCode.PERMISSION_DENIED, False),
        (errno.EROFS, True, ErrorCode.PERMISSION_DENIED, False),
        (errno.EFBIG, True, ErrorCode.TOO_LARGE, False),
        (errno.ENOENT, False, ErrorCode.NOT_FOUND, False),
        (errno.ENOENT, True, ErrorCode.UNAVAILABLE, True),
        (errno.ENOTDIR, True, ErrorCode.CONFLICT, False),
        (errno.ELOOP, False, ErrorCode.PERMISSION_DENIED, False),
        (errno.ENAMETOOLONG, True, ErrorCode.INVALID_REQUEST, False),
        (errno.EINVAL, True, ErrorCode.UNAVAILABLE, False),
    ],
)
def test_os_errors_map_to_the_taxonomy(
    number: int, writing: bool, code: ErrorCode, retryable: bool
) -> None:
    failure = os_failure(
        OSError(number, os.strerror(number), "/srv/secret/path"),
        "k.txt",
        writing=writing,
        backend="local",
    )

    assert (failure.code, failure.retryable, failure.upstream) == (code, retryable, "local")
    assert "/srv/secret" not in failure.message


async def test_presign_is_refused_for_now(store: LocalStore) -> None:
    await put(store, "doc.txt", b"x")

    error = await expect_error(ErrorCode.INVALID_REQUEST, store.presign("doc.txt", "GET", 60))

    assert not error.retryable
    assert "cannot sign URLs" in error.message


async def test_stale_uploads_of_a_crashed_worker_are_removed_on_open(tmp_path: Path) -> None:
    first = LocalStore("local", root_of(tmp_path))
    await first.close()
    temp = root_of(tmp_path) / TMP_DIR
    (temp / "old.part").write_bytes(b"left by a crash")
    os.utime(temp / "old.part", (0, 0))
    (temp / "recent.part").write_bytes(b"another worker's upload in progress")

    second = LocalStore("local", root_of(tmp_path))
    await second.close()

    assert sorted(path.name for path in temp.iterdir()) == ["recent.part"]


async def test_a_closed_store_fails_instead_of_writing_through_reused_descriptors(
    tmp_path: Path,
) -> None:
    store = LocalStore("local", tmp_path / "root")
    await store.close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The numbers the store freed, taken again by folders elsewhere.
    reused = [os.open(elsewhere, os.O_RDONLY | os.O_DIRECTORY) for _ in range(3)]
    try:
        with pytest.raises(FerrymanError):
            await put(store, "a.txt", b"late")
    finally:
        for fd in reused:
            os.close(fd)

    assert list(elsewhere.iterdir()) == []
    assert not (tmp_path / "root" / "a.txt").exists()
