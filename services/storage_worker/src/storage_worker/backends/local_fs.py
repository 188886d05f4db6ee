"""The local backend's filesystem work (blocking calls; `local.py` runs them in threads).

Every path is opened relative to the root's descriptor one name at a time, never following
a symbolic link (`O_NOFOLLOW`, `openat`): a link inside the root, or a folder swapped for
one while a request runs, cannot lead outside it.

Layout under the root: objects at their keys (`reports/q3.pdf`), so the folder can be
browsed; `.ferryman-meta/<2 hex>/<sha256 of the key>.json` the sidecar of each object
(content type, metadata, tags, checksum, version, and the inode of the bytes it describes);
`.ferryman-tmp/` uploads in progress. A sidecar naming another inode (a crash between the two
renames of a commit, a file replaced by hand) is ignored: the object is then described by
its stat alone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import stat
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.local_rules import META_DIR, TMP_DIR
from storage_worker.backends.port import StoredObject

CHUNK_SIZE = 1024 * 1024
STALE_TEMP_SECONDS = 3600
"""Uploads left in `.ferryman-tmp/` longer than this (a crashed worker's) are removed on open."""
_MAX_SIDECAR_BYTES = 1024 * 1024
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
"""`O_NONBLOCK`: opening a FIFO someone left in the root must not hang (regular files ignore it)."""
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Sidecar:
    """What the local backend keeps beside an object's bytes."""

    key: str
    ino: int
    """The inode of the bytes this describes (a rename keeps it)."""
    size: int
    sha256: str | None
    version: str | None
    etag: str | None
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict[str, str])
    tags: dict[str, str] = field(default_factory=dict[str, str])


_SIDECAR = TypeAdapter(Sidecar)


def describe(key: str, st: os.stat_result, sidecar: Sidecar | None) -> StoredObject:
    """The object as stored: its sidecar's description when it is the bytes' own."""
    modified = datetime.fromtimestamp(st.st_mtime, UTC)
    if sidecar is None or sidecar.ino != st.st_ino or sidecar.size != st.st_size:
        return StoredObject(key=key, size=st.st_size, last_modified=modified)
    return StoredObject(
        key=key,
        size=st.st_size,
        content_type=sidecar.content_type,
        sha256=sidecar.sha256,
        etag=sidecar.etag,
        version=sidecar.version,
        last_modified=modified,
        metadata=dict(sidecar.metadata),
        tags=dict(sidecar.tags),
    )


def _check_name(name: str) -> str:
    if name in ("", ".", "..") or "/" in name or "\x00" in name:
        raise ValueError(f"not a single path segment: {name[:100]!r}")
    return name


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(_check_name(name), dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _sidecar_place(key: str) -> tuple[str, str]:
    digest = hashlib.sha256(key.encode()).hexdigest()
    return digest[:2], f"{digest}.json"


class TempFile:
    """An upload in progress in `.ferryman-tmp/`: removed by `discard` unless committed."""

    def __init__(self, fs: RootFs) -> None:
        self._fs = fs
        self.name = f"{uuid.uuid4().hex}.part"
        self.fd = -1
        self.digest = hashlib.sha256()
        self.committed = False

    def open(self) -> None:
        self.fd = os.open(self.name, _CREATE_FLAGS, 0o600, dir_fd=self._fs.tmp_fd)

    def write(self, data: bytearray) -> None:
        self.digest.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def finish(self) -> os.stat_result:
        """Flush to disk; the file's stat."""
        os.fsync(self.fd)
        return os.fstat(self.fd)

    def discard(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
        if not self.committed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.name, dir_fd=self._fs.tmp_fd)


class RootFs:
    """The root folder, opened once; every call is relative to its descriptor."""

    def __init__(self, root: Path, backend: str) -> None:
        self.backend = backend
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.tmp_fd = self.open_dir([TMP_DIR], create=True)
        self.meta_fd = self.open_dir([META_DIR], create=True)
        self._remove_stale_temps()

    def close(self) -> None:
        """Close the folders. Calls still running fail (EBADF) instead of reaching a
        descriptor number the process reuses for something else."""
        fds, (self.meta_fd, self.tmp_fd, self.root_fd) = (
            (self.meta_fd, self.tmp_fd, self.root_fd),
            (-1, -1, -1),
        )
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def open_dir(self, segments: list[str], *, create: bool) -> int:
        """A descriptor of the folder `segments` below the root (the caller closes it)."""
        fd = os.dup(self.root_fd)
        try:
            for segment in segments:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(_check_name(segment), 0o700, dir_fd=fd)
                try:
                    child = os.open(_check_name(segment), DIR_FLAGS, dir_fd=fd)
                except NotADirectoryError:
                    found = _lstat(segment, fd)
                    if found is not None and stat.S_ISLNK(found.st_mode):
                        raise OSError(errno.ELOOP, "a symbolic link") from None
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_object(self, segments: list[str]) -> tuple[int, StoredObject]:
        """A descriptor of the object's bytes (the caller closes it) and its description.

        Raises:
            FerrymanError: `not_found`: no regular file at the key.
        """
        key = "/".join(segments)
        try:
            parent = self.open_dir(segments[:-1], create=False)
            try:
                fd = os.open(_check_name(segments[-1]), _READ_FLAGS, dir_fd=parent)
            finally:
                os.close(parent)
        except (FileNotFoundError, NotADirectoryError):
            raise self._not_found(key) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise self._not_found(key)
        return fd, describe(key, st, self.read_sidecar(key, st))

    def update(
        self,
        segments: list[str],
        *,
        metadata: dict[str, str] | None,
        tags: dict[str, str] | None,
        content_type: str | None,
    ) -> StoredObject:
        """Replace what is given of the object's description (None leaves it).

        Raises:
            FerrymanError: `not_found`.
        """
        fd, found = self.open_object(segments)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        sidecar = Sidecar(
            key=found.key,
            ino=st.st_ino,
            size=st.st_size,
            sha256=found.sha256,
            version=found.version,
            etag=found.etag,
            content_type=found.content_type if content_type is None else content_type,
            metadata=found.metadata if metadata is None else dict(metadata),
            tags=found.tags if tags is None else dict(tags),
        )
        self.write_sidecar(sidecar)
        return describe(found.key, st, sidecar)

    def read_sidecar(self, key: str, st: os.stat_result) -> Sidecar | None:
        """The sidecar of `key` when it describes the bytes `st` is the stat of."""
        folder, name = _sidecar_place(key)
        try:
            parent = os.open(folder, DIR_FLAGS, dir_fd=self.meta_fd)
            try:
                fd = os.open(name, _READ_FLAGS, dir_fd=parent)
            finally:
                os.close(parent)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as file:
            raw = file.read(_MAX_SIDECAR_BYTES)
        try:
            sidecar = _SIDECAR.validate_json(raw)
        except ValidationError:
            return None
        return sidecar if sidecar.key == key and sidecar.ino == st.st_ino else None

    def commit(
        self, segments: list[str], temp: TempFile, sidecar: Sidecar, if_absent: bool
    ) -> None:
        """Put the upload at its key, then its sidecar beside it (each by one rename).

        Raises:
            FerrymanError: `conflict` (`if_absent` and the key exists).
            OSError: as the filesystem reports it.
        """
        staged = self._stage(sidecar)
        try:
            for attempt in itertools.count():
                parent = self.open_dir(segments[:-1], create=True)
                try:
                    self._place(parent, segments[-1], temp, if_absent, sidecar.key)
                    break
                except FileNotFoundError:  # a delete removed the folder as it became empty
                    if attempt >= 2 or temp.committed:
                        raise
                finally:
                    os.close(parent)
            self._install_sidecar(staged, sidecar.key)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged, dir_fd=self.tmp_fd)

    def write_sidecar(self, sidecar: Sidecar) -> None:
        """Replace the sidecar of `sidecar.key` atomically."""
        staged = self._stage(sidecar)
        try:
            self._install_sidecar(staged, sidecar.key)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged, dir_fd=self.tmp_fd)

    def remove(self, segments: list[str]) -> bool:
        """Delete the object and its sidecar, then the folders it leaves empty; whether it was
        there."""
        try:
            parent = self.open_dir(segments[:-1], create=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            st = _lstat(segments[-1], parent)
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise OSError(errno.ELOOP, "a symbolic link")
            if st is None or not stat.S_ISREG(st.st_mode):
                return False
            os.unlink(segments[-1], dir_fd=parent)
            os.fsync(parent)
        finally:
            os.close(parent)
        folder, name = _sidecar_place("/".join(segments))
        with contextlib.suppress(FileNotFoundError):
            sidecar_parent = os.open(folder, DIR_FLAGS, dir_fd=self.meta_fd)
            try:
                os.unlink(name, dir_fd=sidecar_parent)
            finally:
                os.close(sidecar_parent)
        self._prune(segments[:-1])
        return True

    def _place(self, parent: int, name: str, temp: TempFile, if_absent: bool, key: str) -> None:
        existing = _lstat(name, parent)
        if existing is not None and stat.S_ISLNK(existing.st_mode):
            raise OSError(errno.ELOOP, "a symbolic link")
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise IsADirectoryError(errno.EISDIR, "a folder")
        if if_absent:
            try:
                os.link(temp.name, name, src_dir_fd=self.tmp_fd, dst_dir_fd=parent)
            except FileExistsError:
                raise FerrymanError(
                    ErrorCode.CONFLICT, f"{key[:100]!r} already exists", upstream=self.backend
                ) from None
            temp.committed = True
            os.unlink(temp.name, dir_fd=self.tmp_fd)
        else:
            os.replace(temp.name, name, src_dir_fd=self.tmp_fd, dst_dir_fd=parent)
            temp.committed = True
        os.fsync(parent)

    def _stage(self, sidecar: Sidecar) -> str:
        name = f"{uuid.uuid4().hex}.json"
        fd = os.open(name, _CREATE_FLAGS, 0o600, dir_fd=self.tmp_fd)
        try:
            with os.fdopen(fd, "wb", closefd=False) as file:
                file.write(_SIDECAR.dump_json(sidecar))
            os.fsync(fd)
        except BaseException:
            os.unlink(name, dir_fd=self.tmp_fd)
            raise
        finally:
            os.close(fd)
        return name

    def _install_sidecar(self, staged: str, key: str) -> None:
        folder, name = _sidecar_place(key)
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700, dir_fd=self.meta_fd)
        parent = os.open(folder, DIR_FLAGS, dir_fd=self.meta_fd)
        try:
            os.replace(staged, name, src_dir_fd=self.tmp_fd, dst_dir_fd=parent)
            os.fsync(parent)
        finally:
            os.close(parent)

    def _prune(self, folders: list[str]) -> None:
        for depth in range(len(folders), 0, -1):
            try:
                parent = self.open_dir(folders[: depth - 1], create=False)
            except OSError:
                return
            try:
                os.rmdir(folders[depth - 1], dir_fd=parent)
            except OSError:
                return  # not empty (or already gone): the folders above are not empty either
            finally:
                os.close(parent)

    def _remove_stale_temps(self) -> None:
        oldest = time.time() - STALE_TEMP_SECONDS
        with os.scandir(self.tmp_fd) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat(follow_symlinks=False).st_mtime < oldest:
                        os.unlink(entry.name, dir_fd=self.tmp_fd)

    def _not_found(self, key: str) -> FerrymanError:
        return FerrymanError(ErrorCode.NOT_FOUND, f"no object {key[:100]!r}", upstream=self.backend)
