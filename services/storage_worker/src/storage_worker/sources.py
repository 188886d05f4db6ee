"""Content of a put fetched by the worker from a source URL (`PutRequest.source`).

The body streams from the URL (aiohttp, through `source_guard`'s checks and resolver) in
chunks of `CHUNK_BYTES`, with `fetch` progress, the tenant's size limit enforced as it
arrives and the first `SNIFF_BYTES` read before anything is stored, so the content type can
be detected and refused first. Redirects are followed by hand, up to `MAX_REDIRECTS`, each
hop checked like the first; the request's headers go to its own origin only.

Checksums a producer announces are verified when the last byte has arrived, before any
backend commits (every backend stores a body only once its iterator ended without error).
A store needs the object's SHA-256 and CRC32C when the put starts (S3 sends its metadata
before the first part): when the producer announced both, the body streams straight into the
store; otherwise it is spooled to an unnamed temporary file (bounded memory; disk up to the
tenant's size limit) and stored from there with the checksums computed on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import IO
from urllib.parse import urljoin, urlsplit

import aiohttp
from yarl import URL

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman.contracts.storage import SourceRef
from ferryman_runtime.replies import ReplyStream
from storage_worker.checksums import Digests
from storage_worker.policy import SourceAccess
from storage_worker.progress import reported
from storage_worker.source_guard import (
    GuardedResolver,
    Resolve,
    SourceGuard,
    redacted,
    system_resolve,
)

MAX_REDIRECTS = 3
CHUNK_BYTES = 256 * 1024
SNIFF_BYTES = 8192
FETCH_TIMEOUT = 3600.0
"""Seconds a fetch may take at most (less when the request expires sooner)."""
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 60.0
"""Seconds without a byte from the source before the fetch fails."""
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONNECTION_HEADERS = frozenset(
    {"host", "connection", "content-length", "transfer-encoding", "te", "upgrade", "keep-alive"}
)
"""Headers a source's `headers` may not set: they would choose another virtual host behind
the checked address, or change how the request is framed."""
_SPOOL_READ = 1024 * 1024


@dataclass
class SourceContent:
    """Fetched content, ready to store."""

    content_type: str
    """As `content_type_of` judged it from the first `SNIFF_BYTES`."""
    body: AsyncIterator[bytes]
    """All of it, `head` included; fails when a checksum announced does not match."""
    sha256: str
    crc32c: str


@dataclass(frozen=True)
class Announced:
    """What the producer said about the content."""

    sha256: str | None
    crc32c: str | None


class SourceFetcher:
    """Fetches source URLs for puts.

    Args:
        resolve: how host names are resolved (the system's by default; tests inject one).
        clock: the event loop's clock (request deadlines are on it), also timing progress.
    """

    def __init__(
        self, resolve: Resolve = system_resolve, clock: Callable[[], float] | None = None
    ) -> None:
        self._resolve = resolve
        self._clock = clock

    @contextlib.asynccontextmanager
    async def open(
        self,
        source: SourceRef,
        rule: SourceAccess | None,
        *,
        announced: Announced,
        limit: int | None,
        content_type_of: Callable[[bytes], str],
        replies: ReplyStream,
        deadline: float | None,
    ) -> AsyncIterator[SourceContent]:
        """Fetch `source` as `rule` allows, up to `limit` bytes; `content_type_of` judges
        the first bytes (and may refuse them) before the rest is fetched.

        Raises:
            FerrymanError: `permission_denied` (a source the policy does not allow, an
                internal address, or the source's 401/403), `not_found` (404/410),
                `too_large` (over `limit`), `precondition_failed` (a checksum differs),
                `rate_limited` (429), `timeout`, `unavailable` (other failures; retryable
                when the source may recover), `invalid_request` (a malformed URL); and
                what `content_type_of` raises.
        """
        guard = SourceGuard(rule, self._resolve)
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(guard), use_dns_cache=False)
        timeout = aiohttp.ClientTimeout(
            total=self._remaining(deadline), connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
        )
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, trust_env=False, auto_decompress=False
        ) as session:
            response = await _follow(session, guard, source)
            try:
                shown = redacted(str(response.url))
                size = response.content_length
                if limit is not None and size is not None and size > limit:
                    raise _too_large(shown, limit)
                chunks = _limited(_received(response, shown), limit, shown)
                clock = self._clock or asyncio.get_running_loop().time
                chunks = reported(chunks, replies, stage="fetch", total=size, clock=clock)
                head, rest = await _peek(chunks, SNIFF_BYTES)
                content_type = content_type_of(head)
                if announced.sha256 is not None and announced.crc32c is not None:
                    body = _verified(head, rest, announced, Digests())
                    yield SourceContent(content_type, body, announced.sha256, announced.crc32c)
                    return
                async with _spooled(head, rest, announced) as (spool, digests):
                    yield SourceContent(content_type, spool, digests.sha256, digests.crc32c)
            finally:
                response.release()

    def _remaining(self, deadline: float | None) -> float:
        if deadline is None:
            return FETCH_TIMEOUT
        now = (self._clock or asyncio.get_running_loop().time)()
        remaining = deadline - now
        if remaining <= 0:
            raise FerrymanError(
                ErrorCode.TIMEOUT, "the request expired before its source was fetched"
            )
        return min(FETCH_TIMEOUT, remaining)


async def _follow(
    session: aiohttp.ClientSession, guard: SourceGuard, source: SourceRef
) -> aiohttp.ClientResponse:
    url = source.url
    origin = _origin(url)
    refused = sorted(
        name
        for name in source.headers
        if name.lower() in _CONNECTION_HEADERS or name.lower().startswith("proxy-")
    )
    if refused:
        raise FerrymanError(
            ErrorCode.INVALID_REQUEST,
            f"a source's headers may not set {', '.join(n[:64] for n in refused)}",
            retryable=False,
        )
    headers = {"Accept-Encoding": "identity", **source.headers}
    for _ in range(MAX_REDIRECTS + 1):
        parts = guard.check_url(url)
        shown = redacted(url)
        if parts.hostname and _is_ip_literal(parts.hostname):
            # The client's resolver is not asked about an address: check it here.
            await guard.addresses(parts.hostname, parts.port or 0)
        try:
            response = await session.get(
                URL(url, encoded=True), headers=headers, allow_redirects=False
            )
        except FerrymanError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _transfer_failure(exc, shown) from None
        except ValueError:  # what the HTTP client cannot send: a backslash, a CR in a header
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"the source {shown} or its headers cannot be sent as they are",
                retryable=False,
            ) from None
        if response.status not in _REDIRECTS:
            _check_status(response, shown)
            return response
        location = response.headers.get("Location")
        response.release()
        if not location:
            raise FerrymanError(
                ErrorCode.UNAVAILABLE,
                f"the source {shown} redirected ({response.status}) without a Location",
                retryable=False,
            )
        url = urljoin(url, location)
        if _origin(url) != origin:  # the producer's headers are for its own origin only
            headers = {"Accept-Encoding": "identity"}
    raise FerrymanError(
        ErrorCode.UNAVAILABLE,
        f"the source {redacted(source.url)} redirected more than {MAX_REDIRECTS} times",
        retryable=False,
    )


def _origin(url: str) -> tuple[str, str, int | None]:
    try:
        parts = urlsplit(url)
        return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    except ValueError:
        return "", "", None


def _is_ip_literal(host: str) -> bool:
    return ":" in host or host.replace(".", "").isdigit()


def _check_status(response: aiohttp.ClientResponse, shown: str) -> None:
    status = response.status
    if 200 <= status < 300 and status != 206:
        return
    response.release()
    said = f"the source {shown} answered {status}"
    retry_after = _retry_after(response.headers.get("Retry-After"))
    if status in (404, 410):
        raise FerrymanError(ErrorCode.NOT_FOUND, said, status=status, retryable=False)
    if status in (401, 403):
        raise FerrymanError(ErrorCode.PERMISSION_DENIED, said, status=status, retryable=False)
    if status == 429:
        raise FerrymanError(
            ErrorCode.RATE_LIMITED, said, status=status, retryable=True, retry_after=retry_after
        )
    retryable = status >= 500 or status == 408
    raise FerrymanError(
        ErrorCode.UNAVAILABLE, said, status=status, retryable=retryable, retry_after=retry_after
    )


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _transfer_failure(exc: BaseException, shown: str) -> FerrymanError:
    # Only the error's kind: aiohttp's messages may quote the whole URL, query included.
    if isinstance(exc, TimeoutError):
        return FerrymanError(
            ErrorCode.TIMEOUT, f"fetching the source {shown} timed out", retryable=True
        )
    return FerrymanError(
        ErrorCode.UNAVAILABLE,
        f"fetching the source {shown} failed ({type(exc).__name__})",
        retryable=True,
    )


def _too_large(shown: str, limit: int) -> FerrymanError:
    return FerrymanError(
        ErrorCode.TOO_LARGE,
        f"the source {shown} is over the tenant's object size limit ({limit} bytes):"
        " nothing stored",
        retryable=False,
    )


async def _received(response: aiohttp.ClientResponse, shown: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.content.iter_chunked(CHUNK_BYTES):
            yield chunk
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise _transfer_failure(exc, shown) from None


async def _limited(
    chunks: AsyncIterator[bytes], limit: int | None, shown: str
) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if limit is not None and size > limit:
            raise _too_large(shown, limit)
        yield chunk


async def _peek(chunks: AsyncIterator[bytes], count: int) -> tuple[bytes, AsyncIterator[bytes]]:
    head = bytearray()
    while len(head) < count:
        try:
            head += await anext(chunks)
        except StopAsyncIteration:
            break
    return bytes(head), chunks


async def _verified(
    head: bytes, rest: AsyncIterator[bytes], announced: Announced, digests: Digests
) -> AsyncIterator[bytes]:
    digests.update(head)
    if head:
        yield head
    async for chunk in rest:
        digests.update(chunk)
        yield chunk
    digests.verify(sha256=announced.sha256, crc32c=announced.crc32c)


@contextlib.asynccontextmanager
async def _spooled(
    head: bytes, rest: AsyncIterator[bytes], announced: Announced
) -> AsyncIterator[tuple[AsyncIterator[bytes], Digests]]:
    spool = await asyncio.to_thread(tempfile.TemporaryFile)
    try:
        digests = Digests()
        async for chunk in _verified(head, rest, announced, digests):
            await asyncio.to_thread(spool.write, chunk)
        await asyncio.to_thread(spool.seek, 0)
        yield _read_spool(spool), digests
    finally:
        await asyncio.to_thread(spool.close)


@contextlib.asynccontextmanager
async def with_checksums(
    body: AsyncIterator[bytes],
) -> AsyncIterator[tuple[AsyncIterator[bytes], Digests]]:
    """`body` spooled to an unnamed temporary file while its SHA-256 and CRC32C are computed,
    for a store that needs them before the first byte (memory stays bounded; disk use is
    the body's size): the spooled bytes, and their digests."""
    async with _spooled(b"", body, Announced(sha256=None, crc32c=None)) as spooled:
        yield spooled


async def _read_spool(spool: IO[bytes]) -> AsyncIterator[bytes]:
    read = functools.partial(spool.read, _SPOOL_READ)
    while chunk := await asyncio.to_thread(read):
        yield chunk


@contextlib.asynccontextmanager
async def inline(
    data: bytes,
    *,
    announced: Announced,
    limit: int | None,
    content_type_of: Callable[[bytes], str],
) -> AsyncIterator[SourceContent]:
    """Inline content of a put, checked like fetched content.

    Raises:
        FerrymanError: `too_large` (over `limit`), `precondition_failed` (a checksum
            differs), and what `content_type_of` raises.
    """
    if limit is not None and len(data) > limit:
        raise FerrymanError(
            ErrorCode.TOO_LARGE,
            f"{len(data)} bytes is over the tenant's object size limit ({limit})",
            retryable=False,
        )
    content_type = content_type_of(data[:SNIFF_BYTES])
    digests = Digests()
    digests.update(data)
    digests.verify(sha256=announced.sha256, crc32c=announced.crc32c)
    yield SourceContent(content_type, _one_chunk(data), digests.sha256, digests.crc32c)


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data
