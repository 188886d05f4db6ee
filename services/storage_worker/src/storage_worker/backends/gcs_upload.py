"""GCS uploads: a body that fits one chunk goes as one upload request (gcloud-aio-storage),
a larger one as a resumable upload in chunks, one chunk in memory at a time. The SHA-256 is
checked before the last chunk is sent, so nothing becomes visible unless the bytes are the
ones announced; a failure or a cancellation cancels the upload session (GCS never shows an
unfinished resumable upload)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import google_crc32c
from gcloud.aio.storage import Storage

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.gcs_errors import GcsErrorMapper
from storage_worker.backends.gcs_settings import GcsSettings
from storage_worker.backends.port import Body

logger = logging.getLogger(__name__)

DEFAULT_CONTENT_TYPE = "application/octet-stream"


class ChunkReader:
    """Cuts a body into chunks of `size` bytes, holding at most one chunk and one piece of
    the body, and tells whether a chunk is the last; digests the bytes as they arrive
    (complete once the last chunk is read)."""

    def __init__(self, body: Body, size: int) -> None:
        self._body = body
        self._size = size
        self._pending: memoryview | None = None
        self._ended = False
        self._held: bytearray | None = None
        self.sha256 = hashlib.sha256()
        self.crc32c = google_crc32c.Checksum()

    def hold(self, chunk: bytearray) -> None:
        """Give back a chunk (not the last) for the next `read` to return."""
        self._held = chunk

    async def read(self) -> tuple[bytearray, bool]:
        """The next chunk (shorter only at the end) and whether the body ends with it."""
        if self._held is not None:
            chunk, self._held = self._held, None
            return chunk, False
        chunk = bytearray(self._size)
        filled = 0
        while filled < self._size and await self._fill():
            assert self._pending is not None
            take = min(len(self._pending), self._size - filled)
            chunk[filled : filled + take] = self._pending[:take]
            filled += take
            self._pending = self._pending[take:] if take < len(self._pending) else None
        del chunk[filled:]
        return chunk, not await self._fill()

    async def _fill(self) -> bool:
        while self._pending is None and not self._ended:
            try:
                piece = await anext(self._body)
            except StopAsyncIteration:
                self._ended = True
            else:
                if piece:
                    piece = bytes(piece)  # no copy for bytes; the checksum wants read-only
                    self.sha256.update(piece)
                    self.crc32c.update(piece)
                    self._pending = memoryview(piece)
        return self._pending is not None


@dataclass(frozen=True)
class UploadTarget:
    """Where and how an upload goes."""

    storage: Storage
    http: aiohttp.ClientSession
    """The session gcloud-aio-storage uses too (for the resumable protocol it lacks)."""
    settings: GcsSettings
    errors: GcsErrorMapper
    headers: dict[str, str]
    """Authorization for requests sent outside gcloud-aio-storage (empty to an emulator)."""


def mismatch(key: str, expected: str, actual: str) -> FerrymanError:
    """The error for bytes whose SHA-256 is not the one announced (nothing was stored)."""
    return FerrymanError(
        ErrorCode.PRECONDITION_FAILED,
        f"the bytes for {key[:200]!r} have SHA-256 {actual}, not the {expected} announced;"
        " nothing was stored",
    )


def crc32c_b64(hasher: google_crc32c.Checksum) -> str:
    """A CRC32C as GCS writes it (base64 of the big-endian 4 bytes)."""
    return base64.b64encode(hasher.digest()).decode()


async def upload(
    target: UploadTarget,
    key: str,
    body: Body,
    *,
    resource: dict[str, Any],
    sha256: str,
    if_absent: bool,
) -> dict[str, Any]:
    """Store `body` under `key` with `resource` (content type, custom metadata).

    Returns:
        The new object's resource.

    Raises:
        FerrymanError: `precondition_failed` (the SHA-256 differs, or status 412 when
            `if_absent` and the key exists), or the mapped GCS error.
    """
    reader = ChunkReader(body, target.settings.chunk_size)
    first, last = await reader.read()
    if last:
        return await _single(target, key, first, reader, resource, sha256, if_absent)
    reader.hold(first)
    del first  # the reader holds it until sent: nothing else may keep it alive
    return await _resumable(target, key, reader, resource, sha256, if_absent)


async def _single(
    target: UploadTarget,
    key: str,
    data: bytearray,
    reader: ChunkReader,
    resource: dict[str, Any],
    sha256: str,
    if_absent: bool,
) -> dict[str, Any]:
    actual = reader.sha256.hexdigest()
    if actual != sha256:
        raise mismatch(key, sha256, actual)
    described = {
        "metadata": resource.get("metadata") or {},
        "crc32c": crc32c_b64(reader.crc32c),  # GCS checks it
    }
    with target.errors.mapped("put", key):
        return await target.storage.upload(
            target.settings.bucket,
            key,
            bytes(data),
            content_type=resource.get("contentType") or DEFAULT_CONTENT_TYPE,
            metadata=described,
            parameters=_precondition(if_absent),
            force_resumable_upload=False,
            timeout=int(target.settings.request_timeout + target.settings.read_timeout),
        )


async def _resumable(
    target: UploadTarget,
    key: str,
    reader: ChunkReader,
    resource: dict[str, Any],
    sha256: str,
    if_absent: bool,
) -> dict[str, Any]:
    session_uri = await _start_session(target, key, resource, if_absent)
    try:
        sent = 0
        chunk, last = await reader.read()
        while True:
            end = sent + len(chunk) - 1
            if last:
                actual = reader.sha256.hexdigest()
                if actual != sha256:
                    raise mismatch(key, sha256, actual)
                headers = {
                    "Content-Range": f"bytes {sent}-{end}/{end + 1}",
                    "X-Goog-Hash": f"crc32c={crc32c_b64(reader.crc32c)}",  # GCS checks it
                }
                answer = await _send(target, key, session_uri, chunk, headers)
                return json.loads(answer)
            await _send(target, key, session_uri, chunk, {"Content-Range": f"bytes {sent}-{end}/*"})
            sent = end + 1
            del chunk  # sent: free it before reading the next one
            chunk, last = await reader.read()
    except BaseException:
        await asyncio.shield(_cancel(target, key, session_uri))
        raise


async def _start_session(
    target: UploadTarget, key: str, resource: dict[str, Any], if_absent: bool
) -> str:
    settings = target.settings
    url = f"{settings.api_root}/upload/storage/v1/b/{quote(settings.bucket, safe='')}/o"
    content_type = resource.get("contentType") or DEFAULT_CONTENT_TYPE
    document = json.dumps({**resource, "name": key, "contentType": content_type})
    params = {"uploadType": "resumable", "name": key, **_precondition(if_absent)}
    headers = {
        **target.headers,
        "Content-Type": "application/json; charset=UTF-8",
        "X-Upload-Content-Type": content_type,
    }
    with target.errors.mapped("start resumable upload", key):
        async with target.http.post(
            url,
            params=params,
            data=document,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=settings.request_timeout),
            allow_redirects=False,
        ) as answer:
            text = await answer.text()
            if answer.status >= 400:
                raise _failed(target, key, answer, text, "start resumable upload")
            location = answer.headers.get("Location")
    if not location:
        raise FerrymanError(ErrorCode.UNAVAILABLE, f"GCS gave no upload session for {key[:200]!r}")
    return location


async def _send(
    target: UploadTarget, key: str, session_uri: str, chunk: bytearray, headers: dict[str, str]
) -> str:
    settings = target.settings
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=settings.connect_timeout, sock_read=settings.read_timeout
    )
    with target.errors.mapped("upload chunk", key):
        async with target.http.put(
            session_uri,
            data=chunk,
            headers={**target.headers, **headers},
            timeout=timeout,
            allow_redirects=False,
        ) as answer:
            text = await answer.text()
            if answer.status >= 400:
                raise _failed(target, key, answer, text, "upload chunk")
            # 308 "Resume Incomplete": the chunk was taken, the upload goes on
            if answer.status != 308 and headers["Content-Range"].endswith("/*"):
                raise FerrymanError(
                    ErrorCode.UNAVAILABLE,
                    f"GCS answered {answer.status} to a chunk of {key[:200]!r} that was not"
                    " the last",
                )
            return text


def _failed(
    target: UploadTarget, key: str, answer: aiohttp.ClientResponse, text: str, operation: str
) -> FerrymanError:
    where = f"GCS {operation} of {key[:200]!r}"
    return target.errors.from_status(answer.status, text, answer.headers, where)


async def _cancel(target: UploadTarget, key: str, session_uri: str) -> None:
    """Cancel the upload session (best effort: GCS drops an unfinished one within a week
    anyway, and never shows it as an object)."""
    with contextlib.suppress(Exception):
        async with target.http.delete(
            session_uri,
            headers=target.headers,
            timeout=aiohttp.ClientTimeout(total=target.settings.request_timeout),
        ):
            pass
    logger.debug("cancelled the resumable upload of %s", key)


def _precondition(if_absent: bool) -> dict[str, str]:
    return {"ifGenerationMatch": "0"} if if_absent else {}
