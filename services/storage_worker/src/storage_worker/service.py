"""The storage_worker's service: each request to its terminal reply, inside the tenant's
space, with its limits; object events for every write."""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman.contracts.storage import (
    STORAGE_COPY_COMPLETED,
    STORAGE_DELETE_COMPLETED,
    STORAGE_FAILED,
    STORAGE_GET_COMPLETED,
    STORAGE_HEAD_COMPLETED,
    STORAGE_LIST_COMPLETED,
    STORAGE_METADATA_UPDATE_COMPLETED,
    STORAGE_PRESIGN_COMPLETED,
    STORAGE_PUT_COMPLETED,
    CopyCompleted,
    CopyRequest,
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
    PresignCompleted,
    PresignRequest,
    ProcessRequest,
    PutCompleted,
    PutRequest,
    StorageFailed,
)
from ferryman.contracts.usage import UsageEvent
from ferryman_runtime.job import Job
from storage_worker.accounting import RequestAccounting
from storage_worker.backends.port import ObjectStore, StoredObject
from storage_worker.checksums import CRC32C_META, digests_of
from storage_worker.content_types import allowed, compatible, detect
from storage_worker.copies import Endpoint, copy_object
from storage_worker.events import ObjectEvents
from storage_worker.keys import KeyRefused, normalise_key
from storage_worker.metrics import StorageMetrics
from storage_worker.object_info import (
    REQUEST_META,
    object_info,
    refuse_reserved,
    request_marker,
)
from storage_worker.pipelines.runner import PipelineRunner, StepFailed
from storage_worker.pipelines.triggers import UploadTriggers
from storage_worker.policy import Policy, TenantSpace, space_of, tenant_name
from storage_worker.quotas import TenantQuotas
from storage_worker.signed_urls import signing_for
from storage_worker.sources import Announced, SourceFetcher, inline
from storage_worker.stores import Stores, head_or_none
from storage_worker.traffic import tallied

logger = logging.getLogger(__name__)

StorageRequest = (
    PutRequest
    | GetRequest
    | HeadRequest
    | ListRequest
    | DeleteRequest
    | CopyRequest
    | PresignRequest
    | MetadataUpdateRequest
    | ProcessRequest
)

_COPY_CHUNK = 1024 * 1024


class StorageService:
    """Executes storage requests.

    Args:
        stores: the open backends of the active policy.
        policy: the active policy.
        events: publishes object events.
        inline_limit: bytes carried inline in requests and replies.
        quotas: each tenant's request budget.
        sources: fetches the content of puts from a source URL.
        uploads: asks for the `on_upload` pipelines of written objects.
        metrics: where requests, pipeline steps and quota refusals are counted.
        record_usage: takes one usage event per finished request (never raises, never
            blocks: `UsageRecorder.record`).
    """

    def __init__(
        self,
        *,
        stores: Stores,
        policy: Callable[[], Policy],
        events: ObjectEvents,
        inline_limit: int,
        quotas: TenantQuotas | None = None,
        sources: SourceFetcher | None = None,
        uploads: UploadTriggers | None = None,
        metrics: StorageMetrics | None = None,
        record_usage: Callable[[UsageEvent], None] = lambda _event: None,
    ) -> None:
        self._uploads = uploads
        metrics = metrics or StorageMetrics(CollectorRegistry())
        self._accounting = RequestAccounting(metrics, record_usage, policy)
        self._pipelines = PipelineRunner(
            stores=stores, policy=policy, events=events, on_step=metrics.step
        )
        self._stores = stores
        self._sources = sources or SourceFetcher()
        self._quotas = quotas or TenantQuotas()
        self._policy = policy
        self._events = events
        self._inline_limit = inline_limit
        self._handlers: dict[type[BaseModel], Callable[[Any, Job[Any]], Awaitable[Any]]] = {
            PutRequest: self._put,
            GetRequest: self._get,
            HeadRequest: self._head,
            ListRequest: self._list,
            DeleteRequest: self._delete,
            CopyRequest: self._copy,
            PresignRequest: self._presign,
            MetadataUpdateRequest: self._update_metadata,
            ProcessRequest: self._pipelines.process,
        }

    async def execute(self, job: Job[StorageRequest]) -> None:
        """Run one request to its terminal reply; count it and record its usage.

        Raises:
            aiokafka.errors.KafkaError: a reply was not acknowledged.
        """
        started = time.monotonic()
        with tallied() as moved:
            outcome = await self._reply(job)
        seconds = time.monotonic() - started
        self._accounting.finished(job, outcome, seconds, moved.total)

    async def _reply(self, job: Job[StorageRequest]) -> str:
        """Publish the request's terminal reply; return its outcome (`completed` or the
        error code)."""
        try:
            space = space_of(self._policy(), tenant_name(job.tenant), None)
            refuse_reserved(getattr(job.request, "metadata", None))
            async with self._quotas.admitted(space):
                event_type, payload = await self._handlers[type(job.request)](job.request, job)
                if self._uploads is not None:
                    await self._uploads.written(space.tenant, space.rule, payload)
        except StepFailed as exc:
            failed = StorageFailed(error=exc.to_info(), step=exc.step)
            await job.replies.finish(STORAGE_FAILED, failed)
            return str(exc.code)
        except FerrymanError as exc:
            await job.replies.fail(exc.to_info())
            return str(exc.code)
        await job.replies.finish(event_type, payload)
        return "completed"

    async def _space(self, job: Job[Any], backend: str | None) -> tuple[TenantSpace, ObjectStore]:
        space = space_of(self._policy(), tenant_name(job.tenant), backend)
        return space, await self._stores.get(space.backend)

    async def _put(self, request: PutRequest, job: Job[Any]) -> tuple[str, BaseModel]:
        space, store = await self._space(job, request.backend)
        key = _key(request.key)
        marker = request_marker(job.event.source, job.event.id)
        earlier = await head_or_none(store, space.full_key(key))
        if earlier is not None and earlier.metadata.get(REQUEST_META) == marker:
            # A redelivery of a put that was done: its object, not a second write (its event
            # again, in case the first run stopped before publishing it).
            info = object_info(space, earlier)
            await self._events.created(space.tenant, info, "put", job.event.id)
            return STORAGE_PUT_COMPLETED, PutCompleted(object=info, created=False)
        announced = Announced(sha256=request.sha256, crc32c=request.crc32c)
        limit = space.rule.max_object_bytes
        typed = functools.partial(_content_type, request.content_type, space=space)
        if request.source is not None:
            content = self._sources.open(
                request.source,
                space.rule.sources,
                announced=announced,
                limit=limit,
                content_type_of=typed,
                replies=job.replies,
                deadline=job.deadline,
            )
        else:
            data = self._inline_bytes(request.content_base64 or "")
            content = inline(data, announced=announced, limit=limit, content_type_of=typed)
        async with content as checked:
            stored = await store.put(
                space.full_key(key),
                checked.body,
                content_type=checked.content_type,
                metadata={**request.metadata, REQUEST_META: marker, CRC32C_META: checked.crc32c},
                tags=dict(request.tags),
                sha256=checked.sha256,
                if_absent=request.if_absent,
            )
        info = object_info(space, stored)
        await self._events.created(space.tenant, info, "put", job.event.id)
        return STORAGE_PUT_COMPLETED, PutCompleted(object=info)

    async def _get(self, request: GetRequest, job: Job[Any]) -> tuple[str, BaseModel]:
        space, store = await self._space(job, request.backend)
        key = space.full_key(_key(request.key))
        head = await store.head(key)
        inline = request.delivery == "inline" or (
            request.delivery == "auto" and head.size <= self._inline_limit
        )
        if inline:
            if head.size > self._inline_limit:
                raise FerrymanError(
                    ErrorCode.TOO_LARGE,
                    f"{head.size} bytes is over the inline limit ({self._inline_limit}):"
                    " ask for delivery url",
                    retryable=False,
                )
            stored, body = await store.get(key)
            data = await _read_at_most(body, self._inline_limit)
            _check_read(stored, data)
            return STORAGE_GET_COMPLETED, GetCompleted(
                object=object_info(space, stored),
                content_base64=base64.b64encode(data).decode(),
            )
        expires = min(request.url_expires_in, space.rule.max_presign_seconds)
        with signing_for(space.tenant, space.rule.max_object_bytes, job.event.id):
            signed = await store.presign(key, "GET", expires)
        return STORAGE_GET_COMPLETED, GetCompleted(
            object=object_info(space, head), url=signed.url, url_expires_at=signed.expires_at
        )

    async def _head(self, request: HeadRequest, job: Job[Any]) -> tuple[str, BaseModel]:
        space, store = await self._space(job, request.backend)
        stored = await store.head(space.full_key(_key(request.key)))
        return STORAGE_HEAD_COMPLETED, HeadCompleted(object=object_info(space, stored))

    async def _list(self, request: ListRequest, job: Job[Any]) -> tuple[str, BaseModel]:
        space, store = await self._space(job, request.backend)
        try:
            prefix = normalise_key(request.prefix, allow_empty=True, folder=True)
        except KeyRefused as exc:
            raise FerrymanError(ErrorCode.INVALID_REQUEST, str(exc), retryable=False) from None
        page = await store.list(
            space.full_key(prefix),
            delimiter=request.delimiter,
            limit=request.page_size,
            token=request.page_token,
        )
        return STORAGE_LIST_COMPLETED, ListCompleted(
            objects=[object_info(space, o) for o in page.objects],
            prefixes=[space.own_key(p) for p in page.prefixes],
            next_page_token=page.next_token,
        )

    async def _delete(self, request: DeleteRequest, job: Job[Any]) -> tuple[str, BaseModel]:
        space, store = await self._space(job, request.backend)
        key = _key(request.key)
        before = await head_or_none(store, space.full_key(key))
        deleted = await store.delete(space.full_key(key))
        if deleted and before is not None:
            await self._events.deleted(
                space.tenant, object_info(space, before), "delete", job.event.id
            )
        return STORAGE_DELETE_COMPLETED, DeleteCompleted(
            backend=space.backend, key=key, deleted=deleted
        )

    async def _copy(self, request: CopyRequest, job: Job[Any]) -> tuple[str, BaseModel]:
        source_space, source_store = await self._space(job, request.source.backend)
        target_space, target_store = await self._space(job, request.backend)
        source = Endpoint(
            source_space.backend, source_store, source_space.full_key(_key(request.source.key))
        )
        target = Endpoint(
            target_space.backend, target_store, target_space.full_key(_key(request.key))
        )
        stored, wrote = await copy_object(
            source,
            target,
            if_absent=request.if_absent,
            marker=request_marker(job.event.source, job.event.id),
            replies=job.replies,
        )
        info = object_info(target_space, stored)
        cause = "move" if request.move else "copy"
        # Published again by a redelivery (events are at least once).
        await self._events.created(target_space.tenant, info, cause, job.event.id)
        if request.move and (source.backend, source.key) != (target.backend, target.key):
            before = await head_or_none(source_store, source.key)
            # A redelivered move leaves a source key that holds other bytes since (a put
            # after the first run moved it away).
            kept = before is not None and not wrote and before.sha256 != stored.sha256
            if before is not None and not kept and await source_store.delete(source.key):
                await self._events.deleted(
                    source_space.tenant, object_info(source_space, before), "move", job.event.id
                )
        return STORAGE_COPY_COMPLETED, CopyCompleted(object=info, moved=request.move)

    async def _presign(self, request: PresignRequest, job: Job[Any]) -> tuple[str, BaseModel]:
        space, store = await self._space(job, request.backend)
        maximum = space.rule.max_presign_seconds
        if request.expires_in > maximum:
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"expires_in {request.expires_in} s is over the tenant's maximum ({maximum} s)",
                retryable=False,
            )
        with signing_for(space.tenant, space.rule.max_object_bytes, job.event.id):
            signed = await store.presign(
                space.full_key(_key(request.key)),
                request.method,
                request.expires_in,
                content_type=request.content_type,
            )
        return STORAGE_PRESIGN_COMPLETED, PresignCompleted(
            url=signed.url,
            method=signed.method,
            expires_at=signed.expires_at,
            headers=dict(signed.headers),
        )

    async def _update_metadata(
        self, request: MetadataUpdateRequest, job: Job[Any]
    ) -> tuple[str, BaseModel]:
        space, store = await self._space(job, request.backend)
        key = space.full_key(_key(request.key))
        metadata = None
        if request.metadata is not None:
            current = await store.head(key)
            kept = {k: v for k, v in current.metadata.items() if k.startswith("ferryman-")}
            metadata = {**request.metadata, **kept}
        stored = await store.update_metadata(
            key, metadata=metadata, tags=request.tags, content_type=request.content_type
        )
        info = object_info(space, stored)
        await self._events.metadata_changed(space.tenant, info, "metadata", job.event.id)
        return STORAGE_METADATA_UPDATE_COMPLETED, MetadataUpdateCompleted(object=info)

    def _inline_bytes(self, content: str) -> bytes:
        if len(content) > (self._inline_limit + 2) // 3 * 4 + 4:
            raise FerrymanError(
                ErrorCode.TOO_LARGE,
                f"inline content is limited to {self._inline_limit} bytes: upload larger"
                " content to a URL from a presign request (method PUT)",
                retryable=False,
            )
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST, "content_base64 is not valid base64", retryable=False
            ) from None
        if len(data) > self._inline_limit:
            raise FerrymanError(
                ErrorCode.TOO_LARGE,
                f"inline content is limited to {self._inline_limit} bytes",
                retryable=False,
            )
        return data


def _content_type(declared: str | None, head: bytes, *, space: TenantSpace) -> str:
    """The content type to store: the declared one if the bytes can be it, else detected.

    Raises:
        FerrymanError: `invalid_request` (the bytes are not what is declared),
            `permission_denied` (a type the tenant may not store).
    """
    detected = detect(head)
    content_type = declared or detected
    if not compatible(content_type, detected):
        raise FerrymanError(
            ErrorCode.INVALID_REQUEST,
            f"the content is {detected}, not {content_type}",
            retryable=False,
        )
    if not allowed(detected, space.rule.content_types):
        raise FerrymanError(
            ErrorCode.PERMISSION_DENIED,
            f"content type {detected} is not allowed for this tenant",
            retryable=False,
        )
    return content_type


def _check_read(stored: StoredObject, data: bytes) -> None:
    """Check bytes read against the checksums stored with them.

    Raises:
        FerrymanError: `precondition_failed` (retryable: the next read may be intact).
    """
    differs = digests_of(data).mismatch(
        sha256=stored.sha256, crc32c=stored.metadata.get(CRC32C_META)
    )
    if differs is not None:
        raise FerrymanError(
            ErrorCode.PRECONDITION_FAILED,
            f"the object's bytes as read have {differs} as stored",
            retryable=True,
        )


def _key(key: str) -> str:
    try:
        return normalise_key(key)
    except KeyRefused as exc:
        raise FerrymanError(ErrorCode.INVALID_REQUEST, str(exc), retryable=False) from None


async def _read_at_most(body: AsyncIterator[bytes], limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in body:
            size += len(chunk)
            if size > limit:
                raise FerrymanError(
                    ErrorCode.TOO_LARGE,
                    f"the object grew over the inline limit ({limit}) while read",
                    retryable=False,
                )
            chunks.append(chunk)
    finally:
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()
    return b"".join(chunks)
