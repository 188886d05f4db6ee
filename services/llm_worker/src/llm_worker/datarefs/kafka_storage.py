"""`ObjectStorage` on the storage_worker through Kafka (the shared `StorageClient`), and on
its presigned URLs for objects over the inline limit. Storage failures are mapped to the
shared taxonomy here, naming the object and never a URL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Iterator

import httpx2
from aiokafka.errors import KafkaError

from ferryman.contracts import ErrorCode, ErrorInfo, FerrymanError
from ferryman.contracts.storage import (
    STORAGE_PROCESS_REQUESTED,
    ObjectInfo,
    ObjectRef,
    ProcessCompleted,
    ProcessRequest,
)
from ferryman.storage_client import StorageClient, StorageFailedError, inline_content

logger = logging.getLogger(__name__)

UPSTREAM = "storage"
"""The `upstream` of errors raised here."""


class KafkaObjectStorage:
    """The storage operations of dataref resolution, asked of the storage_worker.

    The client connects on first use (a worker whose requests hold no datarefs never does)
    and is closed by `aclose`.

    Args:
        client: a `StorageClient` on the storage_worker's request topic and this worker's
            reply topic (not yet entered).
        http: downloads objects the storage_worker delivers as presigned URLs (default: a
            client of its own, redirects off).
    """

    def __init__(self, client: StorageClient, http: httpx2.AsyncClient | None = None) -> None:
        self._client = client
        self._http = http or httpx2.AsyncClient(follow_redirects=False)
        self._opened = False
        self._opening = asyncio.Lock()

    async def head(self, ref: ObjectRef, *, tenant: str | None, timeout: float) -> ObjectInfo:
        """See `ObjectStorage.head`.

        Raises:
            FerrymanError: the storage_worker failed or did not answer in time.
        """
        client = await self._open()
        with _mapped("head", ref.key, timeout):
            return await client.head(
                ref.key, backend=ref.backend, tenant=tenant, timeout=timeout,
                expires_in=_expiry(timeout),
            )  # fmt: skip

    async def read(
        self, ref: ObjectRef, *, tenant: str | None, timeout: float, limit: int
    ) -> bytes:
        """See `ObjectStorage.read`: inline when the object is within the storage_worker's
        inline limit (checked against its SHA-256), else from a presigned URL.

        Raises:
            FerrymanError: the storage_worker failed or did not answer in time, or the
                download failed.
        """
        client = await self._open()
        with _mapped("get", ref.key, timeout):
            completed = await client.get(
                ref.key, backend=ref.backend, tenant=tenant, timeout=timeout,
                expires_in=_expiry(timeout),
            )  # fmt: skip
            data = inline_content(completed)
        if data is not None:
            return data[:limit]
        if completed.url is None:
            raise FerrymanError(
                ErrorCode.INTERNAL,
                f"the storage_worker answered the get of {ref.key!r} with neither bytes nor URL",
                retryable=False,
                upstream=UPSTREAM,
            )
        return await self._download(completed.url, ref.key, timeout, limit)

    async def presign(
        self, ref: ObjectRef, *, tenant: str | None, timeout: float, expires_in: int
    ) -> str | None:
        """See `ObjectStorage.presign` (None: the storage_worker refused to sign, as for the
        local backend or past the tenant's maximum expiry).

        Raises:
            FerrymanError: the storage_worker failed otherwise or did not answer in time.
        """
        client = await self._open()
        with _mapped("presign", ref.key, timeout):
            try:
                # (`expires_in` is the URL's here: the request carries no expiry of its own.)
                completed = await client.presign(
                    ref.key, "GET", expires_in=expires_in, backend=ref.backend, tenant=tenant,
                    timeout=timeout,
                )  # fmt: skip
            except StorageFailedError as exc:
                if exc.error.code == ErrorCode.INVALID_REQUEST:
                    return None
                raise
        return completed.url

    async def process(
        self, ref: ObjectRef, *, tenant: str | None, timeout: float, pipeline: str
    ) -> ProcessCompleted:
        """See `ObjectStorage.process`.

        Raises:
            FerrymanError: the pipeline failed, or the storage_worker did not answer in time.
        """
        client = await self._open()
        request = ProcessRequest(key=ref.key, backend=ref.backend, pipeline=pipeline)
        with _mapped(f"{pipeline} pipeline", ref.key, timeout):
            completed = await client.request(
                STORAGE_PROCESS_REQUESTED, request, timeout=timeout, tenant=tenant,
                expires_in=_expiry(timeout),
            )  # fmt: skip
        if not isinstance(completed, ProcessCompleted):  # the registry maps it so
            raise TypeError(f"a process request was answered with {type(completed).__name__}")
        return completed

    async def aclose(self) -> None:
        """Disconnect from Kafka and close the HTTP client."""
        if self._opened:
            self._opened = False
            await self._client.__aexit__(None, None, None)
        await self._http.aclose()

    async def _open(self) -> StorageClient:
        if self._opened:
            return self._client
        async with self._opening:
            if not self._opened:
                try:
                    await self._client.__aenter__()
                except (KafkaError, LookupError, ValueError, OSError) as exc:
                    raise FerrymanError(
                        ErrorCode.UNAVAILABLE,
                        f"the storage_worker cannot be reached: {type(exc).__name__}: {exc}",
                        retryable=True,
                        upstream=UPSTREAM,
                    ) from None
                self._opened = True
        return self._client

    async def _download(self, url: str, key: str, timeout: float, limit: int) -> bytes:
        """The first `limit` bytes behind a presigned URL (never logged: it grants access)."""
        received = bytearray()
        try:
            async with asyncio.timeout(timeout), self._http.stream("GET", url) as response:
                if response.status_code != 200:
                    raise _http_error(response.status_code, key)
                async for chunk in response.aiter_bytes():
                    received += chunk[: limit - len(received)]
                    if len(received) >= limit:
                        break
        except TimeoutError:
            raise FerrymanError(
                ErrorCode.TIMEOUT,
                f"the download of {key!r} did not finish within {timeout:g}s",
                retryable=True,
                upstream=UPSTREAM,
            ) from None
        except httpx2.HTTPError as exc:
            raise FerrymanError(
                ErrorCode.UNAVAILABLE,
                f"the download of {key!r} failed: {type(exc).__name__}",
                retryable=True,
                upstream=UPSTREAM,
            ) from None
        except (httpx2.InvalidURL, ValueError) as exc:  # (its message would show the URL)
            raise FerrymanError(
                ErrorCode.INTERNAL,
                f"the storage_worker delivered {key!r} by a URL that cannot be fetched:"
                f" {type(exc).__name__}",
                retryable=False,
                upstream=UPSTREAM,
            ) from None
        return bytes(received)


@contextlib.contextmanager
def _mapped(operation: str, key: str, timeout: float) -> Iterator[None]:
    """Map what a storage request raises to a `FerrymanError` naming the object."""
    try:
        yield
    except StorageFailedError as exc:
        raise _storage_error(exc.error, operation, key) from None
    except TimeoutError:
        raise FerrymanError(
            ErrorCode.TIMEOUT,
            f"the storage_worker did not answer the {operation} of {key!r} within {timeout:g}s",
            retryable=True,
            upstream=UPSTREAM,
        ) from None
    except KafkaError as exc:
        raise FerrymanError(
            ErrorCode.UNAVAILABLE,
            f"the {operation} of {key!r} could not be sent to the storage_worker:"
            f" {type(exc).__name__}",
            retryable=True,
            upstream=UPSTREAM,
        ) from None
    except (RuntimeError, TypeError) as exc:  # a reply stream that ended, or was not one
        raise FerrymanError(
            ErrorCode.UNAVAILABLE,
            f"the {operation} of {key!r} got no usable answer from the storage_worker:"
            f" {type(exc).__name__}",
            retryable=True,
            upstream=UPSTREAM,
        ) from None


def _storage_error(info: ErrorInfo, operation: str, key: str) -> FerrymanError:
    try:
        code = ErrorCode(info.code)
    except ValueError:  # a newer storage_worker's code: its retryability is what counts
        code = ErrorCode.UNAVAILABLE if info.retryable else ErrorCode.INVALID_REQUEST
    return FerrymanError(
        code,
        f"the {operation} of stored object {key!r} failed: {info.message}",
        retryable=info.retryable,
        upstream=UPSTREAM,
    )


def _http_error(status: int, key: str) -> FerrymanError:
    codes = {403: ErrorCode.PERMISSION_DENIED, 404: ErrorCode.NOT_FOUND}
    code = codes.get(status, ErrorCode.UNAVAILABLE if status >= 500 or status == 429 else None)
    return FerrymanError(
        code or ErrorCode.INVALID_REQUEST,
        f"the download of {key!r} was answered HTTP {status}",
        retryable=code is ErrorCode.UNAVAILABLE,
        upstream=UPSTREAM,
        status=status,
    )


def _expiry(timeout: float) -> float:
    """The request's `expirytime`, seconds from now: once its reply is no longer awaited, the
    storage_worker need not start the work."""
    return max(1.0, math.ceil(timeout))
