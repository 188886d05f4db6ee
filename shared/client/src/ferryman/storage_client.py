"""Python client of the storage_worker: put, get, inspect, list, delete, copy and sign
objects in a tenant's space.

```python
async with StorageClient(connection, reply_topic="app-7.storage.results") as storage:
    await storage.put("reports/q3.pdf", pdf, metadata={"owner": "ana"}, tenant="acme")
    data = await storage.get_bytes("reports/q3.pdf", tenant="acme")
    async for info in storage.list_all("reports/", tenant="acme"):
        ...  # ObjectInfo, page after page
    url = await storage.presign("big.bin", method="PUT", tenant="acme")  # upload yourself
```

A thin facade over `FerrymanClient.request_stream`: the storage request types and their
replies are registered in the client's `ReplyRegistry` (`register_storage`), so reply
tokens, run ids and ordering are handled as for chat and MCP. A `failed` reply raises
`StorageFailedError` carrying the `ErrorInfo`.

Bytes travel through Kafka only up to the inline limit (`DEFAULT_INLINE_LIMIT`, 256 KiB,
unless the worker is configured otherwise): `put` refuses larger content (ask for a URL
with `presign(key, method="PUT")` and upload to it with the HTTP client of your choice),
and `get` may answer with a presigned URL instead of the bytes. The client itself never
makes HTTP requests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal, TypeVar, cast

from pydantic import BaseModel

from ferryman.client import FerrymanClient, RequestStream
from ferryman.contracts.storage import (
    DEFAULT_INLINE_LIMIT,
    DEFAULT_STORAGE_REPLY_TOPIC,
    DEFAULT_STORAGE_REQUEST_TOPIC,
    STORAGE_COPY_REQUESTED,
    STORAGE_DELETE_REQUESTED,
    STORAGE_GET_REQUESTED,
    STORAGE_HEAD_REQUESTED,
    STORAGE_LIST_REQUESTED,
    STORAGE_METADATA_UPDATE_REQUESTED,
    STORAGE_PRESIGN_REQUESTED,
    STORAGE_PROCESS_REQUESTED,
    STORAGE_PUT_REQUESTED,
    CopyCompleted,
    DeleteCompleted,
    DeleteRequest,
    GetCompleted,
    GetRequest,
    HeadCompleted,
    HeadRequest,
    ListCompleted,
    ListRequest,
    MetadataUpdateCompleted,
    MetadataUpdateRequest,
    ObjectInfo,
    PresignCompleted,
    ProcessCompleted,
    ProcessRequest,
    PutCompleted,
    PutRequest,
    SourceRef,
)
from ferryman.kafka_config import KafkaConnection
from ferryman.replies import ReplyRegistry, default_registry
from ferryman.storage_requests import (
    CopyEvent,
    ProcessEvent,
    StorageFailedError,
    StorageIntegrityError,
    copy_request,
    inline_content,
    presign_request,
    put_request,
    register_storage,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "TRANSFER_TIMEOUT",
    "CopyEvent",
    "ProcessEvent",
    "StorageClient",
    "StorageFailedError",
    "StorageIntegrityError",
    "inline_content",
    "register_storage",
]

DEFAULT_TIMEOUT = 60.0
"""Seconds a request waits for its reply unless told otherwise."""
TRANSFER_TIMEOUT = 600.0
"""Seconds a copy or move waits for its reply (it may move gigabytes)."""

ReplyT = TypeVar("ReplyT", bound=BaseModel)


class StorageClient(FerrymanClient):
    """A `FerrymanClient` for the storage_worker: storage topics by default, storage replies
    registered.

    Every operation takes `tenant` (whose space it works in), `backend` (one of the tenant's
    backends; None: its default), `timeout` (seconds to wait for the reply) and the other
    options of `FerrymanClient.request_stream` (`request_id`, `traceparent`, `expires_in`, …).
    Every operation raises, besides what its own docstring says:
    `pydantic.ValidationError` for a malformed key, backend or name (nothing is published),
    `StorageFailedError` when the worker answers `failed` (`not_found`, `invalid_request`
    for a key leaving the tenant's space, `permission_denied`, …), `TimeoutError` when no
    reply comes within `timeout`, `ValueError` for a malformed option, and
    `aiokafka.errors.KafkaError` when publishing or reading replies fails.

    Args:
        connection: a `KafkaConnection`, or the bootstrap list of a plaintext cluster.
        request_topic: where requests go (default `storage.requests`).
        reply_topic: where replies are read (default `storage.results`).
        registry: a registry to add the storage types to (default: the chat registry).
        inline_limit: the largest content `put` sends inline (the worker's limit).
        settings: the other `FerrymanClient` settings (`reply_partition`,
            `create_reply_topic`, `source`, `reply_tokens`, `clock`, `metadata_timeout`).

    Raises:
        ValueError: `inline_limit` is not positive.
    """

    def __init__(
        self,
        connection: str | KafkaConnection = "127.0.0.1:9092",
        *,
        request_topic: str = DEFAULT_STORAGE_REQUEST_TOPIC,
        reply_topic: str = DEFAULT_STORAGE_REPLY_TOPIC,
        registry: ReplyRegistry | None = None,
        inline_limit: int = DEFAULT_INLINE_LIMIT,
        **settings: Any,
    ) -> None:
        if inline_limit < 1:
            raise ValueError(f"inline_limit must be positive, not {inline_limit}")
        super().__init__(
            connection,
            request_topic=request_topic,
            reply_topic=reply_topic,
            registry=register_storage(registry or default_registry()),
            **settings,
        )
        self.inline_limit = inline_limit

    async def __aenter__(self) -> StorageClient:
        """Connect and start reading replies (see `FerrymanClient.__aenter__`).

        Raises:
            LookupError: the reply topic does not exist (and was not to be created).
            ValueError: `reply_partition` is not a partition of the reply topic.
            aiokafka.errors.KafkaError: Kafka could not be reached or refused the credentials.
        """
        await super().__aenter__()
        return self

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        if_absent: bool = False,
        backend: str | None = None,
        tenant: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **options: Any,
    ) -> PutCompleted:
        """Store `data` under `key`, inline with its SHA-256 (which the worker checks).

        `content_type` is checked against what the bytes are (None: detected); `if_absent`
        only creates (`conflict` when the key exists). Content over `inline_limit` is not
        sent: ask for an upload URL with `presign(key, method="PUT")` and upload to it with
        an HTTP client of your own (this client makes no HTTP requests).

        Raises:
            ValueError: `data` is over the inline limit (nothing is published).
        """
        request = put_request(
            key,
            data,
            content_type=content_type,
            metadata=metadata,
            tags=tags,
            if_absent=if_absent,
            backend=backend,
            inline_limit=self.inline_limit,
        )
        return await self._ask(
            STORAGE_PUT_REQUESTED, request, PutCompleted, tenant, timeout, options
        )

    async def put_from(
        self,
        key: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        sha256: str | None = None,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        backend: str | None = None,
        tenant: str | None = None,
        timeout: float = TRANSFER_TIMEOUT,
        **options: Any,
    ) -> PutCompleted:
        """Have the worker fetch `url` (http or https, of any size) and store it under `key`:
        the tenant's policy must allow the URL's scheme and host (`permission_denied`
        otherwise); `sha256`, when given, is checked (`precondition_failed`, nothing
        stored).

        Raises:
            StorageFailedError: `permission_denied`, `not_found` (the source), `too_large`, …
        """
        request = PutRequest(
            key=key,
            backend=backend,
            source=SourceRef(url=url, headers=dict(headers or {})),
            sha256=sha256,
            content_type=content_type,
            metadata=dict(metadata or {}),
        )
        return await self._ask(
            STORAGE_PUT_REQUESTED, request, PutCompleted, tenant, timeout, options
        )

    async def get(
        self,
        key: str,
        *,
        delivery: Literal["auto", "inline", "url"] = "auto",
        url_expires_in: int = 900,
        backend: str | None = None,
        tenant: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **options: Any,
    ) -> GetCompleted:
        """Fetch `key`: its `ObjectInfo` with the bytes inline (`content_base64`; decode and
        check them with `inline_content`) or a presigned GET URL (`url`, until
        `url_expires_at`) for the caller to download. `delivery`: `inline` (`too_large`
        past the inline limit), `url`, or `auto` (inline when small enough).

        Raises:
            StorageFailedError: `not_found`, `too_large`, … (see the class).
        """
        request = GetRequest(
            key=key, backend=backend, delivery=delivery, url_expires_in=url_expires_in
        )
        return await self._ask(
            STORAGE_GET_REQUESTED, request, GetCompleted, tenant, timeout, options
        )

    async def get_bytes(
        self,
        key: str,
        *,
        backend: str | None = None,
        tenant: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **options: Any,
    ) -> bytes:
        """Fetch the bytes of `key` inline, checked against its SHA-256. Inline only: an
        object over the worker's inline limit fails `too_large`; for those, `get` returns
        the URL delivery as such (`GetCompleted.url`), for the caller to download.

        Raises:
            StorageFailedError: `not_found`, `too_large`, … (see the class).
            StorageIntegrityError: the bytes do not match the object's SHA-256.
        """
        completed = await self.get(
            key, delivery="inline", backend=backend, tenant=tenant, timeout=timeout, **options
        )
        data = inline_content(completed)
        if data is None:  # the worker sends the bytes when asked for inline delivery
            raise RuntimeError("the worker answered an inline get with a URL")
        return data

    async def head(
        self,
        key: str,
        *,
        backend: str | None = None,
        tenant: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **options: Any,
    ) -> ObjectInfo:
        """Return what is known of `key`: size, content type, checksum, metadata, tags, ….

        Raises:
            StorageFailedError: `not_found`, … (see the class).
        """
        request = HeadRequest(key=key, backend=backend)
        completed = await self._ask(
            STORAGE_HEAD_REQUESTED, request, HeadCompleted, tenant, timeout, options
        )
        return completed.object

    async def list(
        self,
        prefix: str = "",
        *,
        delimiter: Literal["/"] | None = None,
        page_size: int = 1000,
        page_token: str | None = None,
        backend: str | None = None,
        tenant: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **options: Any,
    ) -> ListCompleted:
        """Return one page (at most `page_size`, 1 to 1000) of the objects under `prefix`;
        with `delimiter="/"`, keys below the next `/` are rolled up into `prefixes`.
        `next_page_token` asks for the next page (see `list_pages`).

        Raises:
            StorageFailedError: `invalid_request` for a prefix leaving the space, … (see
                the class).
        """
        request = ListRequest(
            prefix=prefix,
            delimiter=delimiter,
            backend=backend,
            page_size=page_size,
            page_token=page_token,
        )
        return await self._ask(
            STORAGE_LIST_REQUESTED, request, ListCompleted, tenant, timeout, options
        )

    async def list_pages(
        self, prefix: str = "", *, delimiter: Literal["/"] | None = None, **options: Any
    ) -> AsyncIterator[ListCompleted]:
        """Yield every page of the listing of `prefix`, following the page tokens (options
        of `list` but `page_token`; `timeout` applies to each page).

        Raises:
            RuntimeError: the worker handed out a page token twice (a listing without end).
        """
        token: str | None = None
        seen: set[str] = set()
        while True:
            page = await self.list(prefix, delimiter=delimiter, page_token=token, **options)
            yield page
            token = page.next_page_token
            if token is None:
                return
            if token in seen:
                raise RuntimeError("the worker repeated a page token: the listing would not end")
            seen.add(token)

    async def list_all(self, prefix: str = "", **options: Any) -> AsyncIterator[ObjectInfo]:
        """Yield every object under `prefix`, page after page (options of `list` but
        `delimiter` and `page_token`).

        Raises:
            RuntimeError: the worker handed out a page token twice.
        """
        async for page in self.list_pages(prefix, **options):
            for info in page.objects:
                yield info

    async def delete(
        self,
        key: str,
        *,
        backend: str | None = None,
        tenant: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **options: Any,
    ) -> DeleteCompleted:
        """Delete `key`; deleting a missing key succeeds, with `deleted: false`.

        Raises:
            StorageFailedError: see the class.
        """
        request = DeleteRequest(key=key, backend=backend)
        return await self._ask(
            STORAGE_DELETE_REQUESTED, request, DeleteCompleted, tenant, timeout, options
        )

    def copy_stream(
        self,
        source: str,
        key: str,
        *,
        move: bool = False,
        if_absent: bool = False,
        source_backend: str | None = None,
        backend: str | None = None,
        tenant: str | None = None,
        timeout: float = TRANSFER_TIMEOUT,
        **options: Any,
    ) -> RequestStream[CopyEvent]:
        """Return the stream of a copy of `source` to `key` (`move`: then `source` is
        deleted), possibly across the tenant's backends: iterating it publishes the request
        and yields progress as it comes, then the `CopyCompleted`; its `request_id` is known
        at once (for `cancel`).

        Raises:
            StorageFailedError: `not_found`, `conflict` with `if_absent`, … (when iterated).
        """
        request = copy_request(
            source,
            key,
            move=move,
            if_absent=if_absent,
            source_backend=source_backend,
            backend=backend,
        )
        stream = self.request_stream(
            STORAGE_COPY_REQUESTED, request, timeout=timeout, tenant=tenant, **options
        )
        return cast(RequestStream[CopyEvent], stream)

    async def copy(
        self,
        source: str,
        key: str,
        *,
        move: bool = False,
        source_backend: str | None = None,
        backend: str | None = None,
        **options: Any,
    ) -> CopyCompleted:
        """Copy (`move=True`: move) `source` to `key` and return the `CopyCompleted`
        (options of `copy_stream`: `if_absent`, `tenant`, `timeout`, …).

        Raises:
            StorageFailedError: `not_found`, `conflict` with `if_absent`, … (see the class).
        """
        stream = self.copy_stream(
            source, key, move=move, source_backend=source_backend, backend=backend, **options
        )
        async for event in stream:
            if isinstance(event, CopyCompleted):
                return event
        raise RuntimeError("the reply stream ended without a terminal event")

    def process_stream(
        self,
        key: str,
        pipeline: str,
        *,
        force: bool = False,
        backend: str | None = None,
        tenant: str | None = None,
        timeout: float = TRANSFER_TIMEOUT,
        **options: Any,
    ) -> RequestStream[ProcessEvent]:
        """Return the stream of a run of the worker's pipeline `pipeline` (e.g. the built-in
        `text` or `thumbnail`) on `key`: progress by step (`stage`), then the
        `ProcessCompleted` with the derived objects (`force`: run again even when outputs of
        this version exist).

        Raises:
            StorageFailedError: when iterated: `not_found`, the failing step's error (its
                `step` named in the failure), …
        """
        request = ProcessRequest(key=key, backend=backend, pipeline=pipeline, force=force)
        stream = self.request_stream(
            STORAGE_PROCESS_REQUESTED, request, timeout=timeout, tenant=tenant, **options
        )
        return cast(RequestStream[ProcessEvent], stream)

    async def process(self, key: str, pipeline: str, **options: Any) -> ProcessCompleted:
        """Run `pipeline` on `key` and return the `ProcessCompleted` (options of
        `process_stream`).

        Raises:
            StorageFailedError: `not_found`, the failing step's error, …
        """
        async for event in self.process_stream(key, pipeline, **options):
            if isinstance(event, ProcessCompleted):
                return event
        raise RuntimeError("the reply stream ended without a terminal event")

    async def presign(
        self,
        key: str,
        method: Literal["GET", "PUT"] = "GET",
        *,
        expires_in: int = 900,
        content_type: str | None = None,
        backend: str | None = None,
        tenant: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **options: Any,
    ) -> PresignCompleted:
        """Return a URL to GET or PUT `key` directly until `expires_at`, with the headers
        the request to it must send (for a PUT with `content_type`, its `Content-Type`).
        The URL grants access by itself: do not log it.

        Raises:
            StorageFailedError: `invalid_request` past the tenant's maximum expiry, … (see
                the class).
        """
        request = presign_request(
            key, method, expires_in=expires_in, content_type=content_type, backend=backend
        )
        return await self._ask(
            STORAGE_PRESIGN_REQUESTED, request, PresignCompleted, tenant, timeout, options
        )

    async def update_metadata(
        self,
        key: str,
        *,
        metadata: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        content_type: str | None = None,
        backend: str | None = None,
        tenant: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **options: Any,
    ) -> ObjectInfo:
        """Replace the user metadata and/or the tags of `key` (each whole; None leaves it),
        and its content type if given; return the object as it is now.

        Raises:
            StorageFailedError: `not_found`, … (see the class).
        """
        request = MetadataUpdateRequest(
            key=key,
            backend=backend,
            metadata=None if metadata is None else dict(metadata),
            tags=None if tags is None else dict(tags),
            content_type=content_type,
        )
        completed = await self._ask(
            STORAGE_METADATA_UPDATE_REQUESTED,
            request,
            MetadataUpdateCompleted,
            tenant,
            timeout,
            options,
        )
        return completed.object

    async def _ask(
        self,
        event_type: str,
        request: BaseModel,
        reply: type[ReplyT],
        tenant: str | None,
        timeout: float,
        options: dict[str, Any],
    ) -> ReplyT:
        completed = await self.request(
            event_type, request, timeout=timeout, tenant=tenant, **options
        )
        if not isinstance(completed, reply):  # the registry maps each request to its reply
            raise RuntimeError(f"{event_type} was answered with {type(completed).__name__}")
        return completed
