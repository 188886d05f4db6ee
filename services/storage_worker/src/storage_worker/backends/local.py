"""The local filesystem backend: the embedded default, so a first try needs no cloud account.

One root folder holds the objects at their keys; nothing outside it is ever opened (every
path is resolved one name at a time from the root's descriptor, and symbolic links are never
followed: see `local_fs`). Writes stream to `.ferryman-tmp/`, are flushed to disk and renamed
into place, so an object is there whole or not at all; a failed or cancelled upload leaves
nothing. Blocking calls run in threads; a cancelled request waits for its thread to finish
before anything it holds is released.

Writers of one key are serialised within this process (a put's commit, a metadata update, a
delete); several processes sharing a root stay safe (atomic renames, `if_absent` by `link`)
but may describe an object by its stat alone while another one commits it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.local_fs import CHUNK_SIZE, RootFs, Sidecar, TempFile, describe
from storage_worker.backends.local_listing import list_page
from storage_worker.backends.local_rules import decode_token, key_segments, os_failure
from storage_worker.backends.port import Body, Listing, Presigned, StoredObject
from storage_worker.keys import KeyRefused, normalise_key

if TYPE_CHECKING:
    from storage_worker.signed_urls import UrlSigner

T = TypeVar("T")
_LOCK_STRIPES = 64


async def in_thread(func: Callable[[], T], *, discard: Callable[[T], None] | None = None) -> T:
    """`func()` in a worker thread. When the caller is cancelled, the thread (which cannot be
    stopped) is waited for first, so nothing it uses is released under it; what it returned
    is then passed to `discard` (e.g. a descriptor to close)."""
    task = asyncio.ensure_future(asyncio.to_thread(func))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is None and discard is not None:
            discard(task.result())
        raise


class FileBody:
    """An object's bytes read from an open descriptor in chunks of 1 MiB (closed at the end,
    on `aclose`, or when collected)."""

    def __init__(self, fd: int, key: str, backend: str) -> None:
        self._fd = fd
        self._key = key
        self._backend = backend
        self._reading = False
        self._close_after_read = False

    def __aiter__(self) -> FileBody:
        return self

    async def __anext__(self) -> bytes:
        if self._fd < 0:
            raise StopAsyncIteration
        self._reading = True
        try:
            chunk = await in_thread(functools.partial(_read, self._fd))
        except OSError as exc:
            self._close()
            raise os_failure(exc, self._key, writing=False, backend=self._backend) from exc
        finally:
            self._reading = False
            if self._close_after_read:
                self._close()
        if not chunk:
            self._close()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Close the descriptor (after a read in progress, if there is one)."""
        if self._reading:
            self._close_after_read = True
        else:
            self._close()

    def _close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            _close_fd(fd)

    def __del__(self) -> None:
        self._close()


def _read(fd: int) -> bytes:
    return os.read(fd, CHUNK_SIZE)


def _close_fd(fd: int) -> None:
    os.close(fd)


class LocalStore:
    """One root folder as an `ObjectStore` (see the module's docstring).

    Args:
        name: the backend's name in the policy file.
        root: the folder (created if missing); the objects live below it.
        signer: signs URLs the worker serves (`local_urls`); None: `presign` is refused.

    Raises:
        OSError: the root cannot be created or opened.
    """

    def __init__(self, name: str, root: Path, signer: UrlSigner | None = None) -> None:
        self.name = name
        self._signer = signer
        self._fs = RootFs(root.resolve(), name)
        self._locks = tuple(asyncio.Lock() for _ in range(_LOCK_STRIPES))

    async def put(
        self,
        key: str,
        body: Body,
        *,
        content_type: str | None,
        metadata: dict[str, str],
        tags: dict[str, str],
        sha256: str | None,
        if_absent: bool = False,
    ) -> StoredObject:
        """Store `body` under `key`, whole or not at all; the bytes' SHA-256 must be `sha256`
        (None: computed as they are written, for uploads to a signed URL).

        Raises:
            FerrymanError: `precondition_failed` (the bytes do not match `sha256`),
                `conflict` (`if_absent` and the key exists, or a folder is in the way),
                `permission_denied`, `too_large`, `unavailable` (disk full: retryable), or
                `invalid_request` (a refused key). An error of `body` itself propagates as is.
        """
        return await self._put(
            key,
            body,
            content_type=content_type,
            metadata=metadata,
            tags=tags,
            sha256=sha256,
            if_absent=if_absent,
        )

    async def get(self, key: str) -> tuple[StoredObject, Body]:
        """The object and its bytes, streamed in chunks of 1 MiB (close the body when done).

        Raises:
            FerrymanError: `not_found`, `permission_denied` (a symbolic link), …
        """
        return await self._open(key)

    async def head(self, key: str) -> StoredObject:
        """The object's description.

        Raises:
            FerrymanError: `not_found`, `permission_denied` (a symbolic link), …
        """
        found, body = await self._open(key)
        await body.aclose()
        return found

    async def list(
        self, prefix: str, *, delimiter: str | None, limit: int, token: str | None
    ) -> Listing:
        """One page of the keys under `prefix`, in key order (UTF-8 byte order).

        Raises:
            FerrymanError: `invalid_request` (a bad prefix, delimiter, limit or token), …
        """
        if delimiter not in (None, "/") or limit < 1:
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                "a listing takes the delimiter `/` (or none) and a limit of at least 1",
                upstream=self.name,
            )
        try:
            prefix = normalise_key(prefix, allow_empty=True, folder=True)
        except KeyRefused as exc:
            raise FerrymanError(ErrorCode.INVALID_REQUEST, str(exc), upstream=self.name) from None
        after = decode_token(token, self.name) if token else None
        return await self._io(
            prefix, functools.partial(list_page, self._fs, prefix, delimiter, limit, after)
        )

    async def delete(self, key: str) -> bool:
        """Delete the object (and the folders it leaves empty); whether it existed.

        Raises:
            FerrymanError: `permission_denied` (a symbolic link, or not allowed), …
        """
        segments = key_segments(key, self.name)
        key = "/".join(segments)
        async with self._lock(key):
            return await self._io(key, functools.partial(self._fs.remove, segments), writing=True)

    async def copy(self, source: str, key: str, *, if_absent: bool = False) -> StoredObject:
        """Copy `source` to `key` (bytes streamed; metadata, tags and checksum kept, the
        checksum verified on the way).

        Raises:
            FerrymanError: `not_found` (no source), `conflict` (`if_absent`),
                `precondition_failed` (the source's bytes no longer match its checksum), …
        """
        found, body = await self._open(source)
        try:
            return await self._put(
                key,
                body,
                content_type=found.content_type,
                metadata=found.metadata,
                tags=found.tags,
                sha256=found.sha256,
                if_absent=if_absent,
            )
        finally:
            await body.aclose()

    async def update_metadata(
        self,
        key: str,
        *,
        metadata: dict[str, str] | None,
        tags: dict[str, str] | None,
        content_type: str | None,
    ) -> StoredObject:
        """Replace the metadata and/or tags (None leaves them) and the content type (None
        leaves it); the bytes and their version stay.

        Raises:
            FerrymanError: `not_found`, `permission_denied`, `unavailable`, …
        """
        segments = key_segments(key, self.name)
        key = "/".join(segments)
        update = functools.partial(
            self._fs.update, segments, metadata=metadata, tags=tags, content_type=content_type
        )
        async with self._lock(key):
            return await self._io(key, update, writing=True)

    async def presign(
        self,
        key: str,
        method: Literal["GET", "PUT"],
        expires_in: int,
        *,
        content_type: str | None = None,
    ) -> Presigned:
        """A URL of the worker's `/objects` route to GET or PUT `key` (signed by the signer
        the store was given; a PUT with `content_type` must send it).

        Raises:
            FerrymanError: `invalid_request` without a signer, for a refused key, or for an
                expiry outside 1 s to 7 days.
        """
        if self._signer is None:
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                "the local backend cannot sign URLs here: fetch or store the object through"
                " the worker (inline, or from a source URL)",
                retryable=False,
                upstream=self.name,
            )
        key = "/".join(key_segments(key, self.name))
        return self._signer.presign(self.name, key, method, expires_in, content_type=content_type)

    async def close(self) -> None:
        """Close the root's descriptors."""
        self._fs.close()

    async def _put(
        self,
        key: str,
        body: Body,
        *,
        content_type: str | None,
        metadata: dict[str, str],
        tags: dict[str, str],
        sha256: str | None,
        if_absent: bool,
    ) -> StoredObject:
        segments = key_segments(key, self.name)
        key = "/".join(segments)
        temp = TempFile(self._fs)
        try:
            await self._io(key, temp.open, writing=True)
            buffer = bytearray()
            async for chunk in body:
                buffer += chunk
                if len(buffer) >= CHUNK_SIZE:
                    data, buffer = buffer, bytearray()
                    await self._io(key, functools.partial(temp.write, data), writing=True)
            if buffer:
                await self._io(key, functools.partial(temp.write, buffer), writing=True)
            st = await self._io(key, temp.finish, writing=True)
            actual = temp.digest.hexdigest()
            if sha256 is not None and actual != sha256:
                raise FerrymanError(
                    ErrorCode.PRECONDITION_FAILED,
                    f"the bytes of {key[:100]!r} do not match their SHA-256: nothing stored",
                    upstream=self.name,
                )
            sidecar = Sidecar(
                key=key,
                ino=st.st_ino,
                size=st.st_size,
                sha256=actual,
                version=uuid.uuid4().hex,
                etag=actual[:32],
                content_type=content_type,
                metadata=dict(metadata),
                tags=dict(tags),
            )
            async with self._lock(key):
                commit = functools.partial(self._fs.commit, segments, temp, sidecar, if_absent)
                await self._io(key, commit, writing=True)
            return describe(key, st, sidecar)
        finally:
            await self._io(key, temp.discard, writing=True)

    async def _open(self, key: str) -> tuple[StoredObject, FileBody]:
        segments = key_segments(key, self.name)
        key = "/".join(segments)
        async with self._lock(key):
            fd, found = await self._io(
                key,
                functools.partial(self._fs.open_object, segments),
                discard=lambda opened: _close_fd(opened[0]),
            )
        return found, FileBody(fd, key, self.name)

    async def _io(
        self,
        key: str,
        func: Callable[[], T],
        *,
        writing: bool = False,
        discard: Callable[[T], None] | None = None,
    ) -> T:
        try:
            return await in_thread(func, discard=discard)
        except OSError as exc:
            raise os_failure(exc, key, writing=writing, backend=self.name) from exc

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks[hash(key) % _LOCK_STRIPES]
