"""Dataref resolution on an `ObjectStorage`: each dataref part of a chat request becomes the
object's text or image, fetched in the request's tenant before any provider is called."""

from __future__ import annotations

import asyncio
import base64
import logging
import math

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from ferryman.contracts.llm import DataRefPart, ImagePart, ImageURL, TextPart, UserMessage
from ferryman.contracts.storage import ObjectInfo, ObjectRef
from llm_worker.datarefs.port import ImageDelivery, ObjectStorage
from llm_worker.datarefs.settings import DataRefSettings
from llm_worker.datarefs.text import (
    IMAGE_TYPES,
    MAX_BYTES_PER_CHAR,
    charset,
    decode_prefix,
    is_image,
    is_plain_text,
    labelled,
    media_type,
)

logger = logging.getLogger(__name__)

URL_MARGIN = 60
"""Seconds an image URL outlives the request's deadline (a provider fetching it late)."""

Resolved = TextPart | ImagePart
PartKey = tuple[str, str | None, str]
"""A dataref part as (key, backend, as): one resolution per distinct part."""


def _part_key(part: DataRefPart) -> PartKey:
    return (part.dataref.key, part.dataref.backend, part.as_)


class StorageResolver:
    """A `DataRefResolver` asking an `ObjectStorage` (the storage_worker) for the objects.

    Text: objects that are text already (`text/*` but HTML, JSON, XML) are read and decoded
    (their `charset`, else UTF-8); others, and text that does not decode, go through the
    storage pipeline `settings.text_pipeline`, whose `settings.text_step` output is read.
    Images: a presigned URL with `images="url"` when the object's backend signs URLs (and
    `settings.image_delivery` allows URLs), else the bytes as a `data:` URL (at most
    `settings.image_max_bytes`).

    Args:
        storage: the storage operations, in the request's tenant.
        settings: limits, timeouts and the text pipeline.
    """

    def __init__(self, storage: ObjectStorage, settings: DataRefSettings) -> None:
        self._storage = storage
        self._settings = settings

    async def resolve(
        self,
        request: ChatRequest,
        *,
        tenant: str | None,
        images: ImageDelivery,
        within: float,
    ) -> ChatRequest:
        """Return `request` with its dataref parts replaced (see `DataRefResolver.resolve`).

        Raises:
            FerrymanError: an object could not be resolved (`not_found`,
                `permission_denied`, `invalid_request`, `too_large`, or retryable
                `unavailable` / `timeout`); `timeout` when `within` seconds pass first.
        """
        parts = list({_part_key(part): part for part in request.datarefs()}.values())
        if not parts:
            return request
        if len(parts) > self._settings.max_refs:
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"the request references {len(parts)} objects; at most"
                f" {self._settings.max_refs} are resolved per request",
                retryable=False,
            )
        if self._settings.image_delivery == "inline":
            images = "inline"
        # Every turn of a tool loop sends the images again: their URLs must outlive the
        # request, not just this first call (past the tenant's maximum, inline instead).
        lifetime = self._settings.image_url_expires_in
        if not math.isinf(within):
            lifetime = max(lifetime, math.ceil(within) + URL_MARGIN)
        try:
            async with asyncio.timeout(None if math.isinf(within) else max(within, 0.0)):
                resolved = await self._resolve_all(parts, tenant, images, lifetime)
        except TimeoutError:
            raise FerrymanError(
                ErrorCode.TIMEOUT,
                "the request's deadline passed while the objects it references were fetched",
                retryable=True,
            ) from None
        return _replaced(request, resolved)

    async def _resolve_all(
        self, parts: list[DataRefPart], tenant: str | None, images: ImageDelivery, lifetime: int
    ) -> dict[PartKey, Resolved]:
        if len(parts) == 1:
            only = parts[0]
            return {_part_key(only): await self._resolve_one(only, tenant, images, lifetime)}
        try:
            async with asyncio.TaskGroup() as group:
                tasks = {
                    _part_key(part): group.create_task(
                        self._resolve_one(part, tenant, images, lifetime)
                    )
                    for part in parts
                }
        except BaseExceptionGroup as failed:
            raise _first_error(failed) from None
        return {part: task.result() for part, task in tasks.items()}

    async def _resolve_one(
        self, part: DataRefPart, tenant: str | None, images: ImageDelivery, lifetime: int
    ) -> Resolved:
        info = await self._storage.head(part.dataref, tenant=tenant, timeout=self._settings.timeout)
        pinned = ObjectRef(key=info.key, backend=info.backend)
        wanted = part.as_
        if wanted == "auto":
            wanted = "image" if is_image(info.content_type) else "text"
        logger.debug("resolving dataref %s/%s as %s", info.backend, info.key, wanted)
        if wanted == "image":
            return await self._image(pinned, info, tenant, images, lifetime)
        return TextPart(type="text", text=await self._text(pinned, info, tenant))

    async def _text(self, ref: ObjectRef, info: ObjectInfo, tenant: str | None) -> str:
        settings = self._settings
        limit = (settings.text_max_chars + 1) * MAX_BYTES_PER_CHAR
        if is_plain_text(info.content_type):
            data = await self._storage.read(
                ref, tenant=tenant, timeout=settings.timeout, limit=limit
            )
            complete = len(data) >= info.size
            try:
                text = decode_prefix(
                    data, charset(info.content_type) or "utf-8-sig", complete=complete
                )
            except UnicodeDecodeError:
                pass  # not in its declared (or the default) encoding: the pipeline detects it
            else:
                return labelled(info.key, text, settings.text_max_chars, cut=not complete)
        output = await self._extracted(ref, info, tenant)
        output_ref = ObjectRef(key=output.key, backend=output.backend)
        data = await self._storage.read(
            output_ref, tenant=tenant, timeout=settings.timeout, limit=limit
        )
        complete = len(data) >= output.size
        text = decode_prefix(data, "utf-8-sig", complete=complete, errors="replace")
        return labelled(info.key, text, settings.text_max_chars, cut=not complete)

    async def _extracted(self, ref: ObjectRef, info: ObjectInfo, tenant: str | None) -> ObjectInfo:
        """The text the text pipeline extracted from `ref` (a derived object)."""
        settings = self._settings
        completed = await self._storage.process(
            ref, tenant=tenant, timeout=settings.process_timeout, pipeline=settings.text_pipeline
        )
        for output in completed.outputs:
            if output.lineage is not None and output.lineage.step == settings.text_step:
                return output
        kind = media_type(info.content_type) or "of unknown type"
        raise FerrymanError(
            ErrorCode.INVALID_REQUEST,
            f"no text could be extracted from {info.key!r} ({kind}): the storage pipeline"
            f" {settings.text_pipeline!r} gave no {settings.text_step!r} output",
            retryable=False,
        )

    async def _image(
        self,
        ref: ObjectRef,
        info: ObjectInfo,
        tenant: str | None,
        images: ImageDelivery,
        lifetime: int,
    ) -> ImagePart:
        settings = self._settings
        kind = media_type(info.content_type)
        if kind not in IMAGE_TYPES:
            accepted = ", ".join(sorted(IMAGE_TYPES))
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"{info.key!r} is {kind or 'of unknown type'}, not an image models take"
                f" ({accepted})",
                retryable=False,
            )
        if images == "url":
            url = await self._storage.presign(
                ref,
                tenant=tenant,
                timeout=settings.timeout,
                expires_in=lifetime,
            )
            if url is not None:
                return ImagePart(type="image_url", image_url=ImageURL(url=url))
        too_large = FerrymanError(
            ErrorCode.TOO_LARGE,
            f"image {info.key!r} is over the {settings.image_max_bytes} bytes sent inline",
            retryable=False,
        )
        if info.size > settings.image_max_bytes:
            raise too_large
        limit = settings.image_max_bytes + 1
        data = await self._storage.read(ref, tenant=tenant, timeout=settings.timeout, limit=limit)
        if len(data) > settings.image_max_bytes:
            raise too_large  # it grew since it was inspected
        encoded = base64.b64encode(data).decode("ascii")
        return ImagePart(type="image_url", image_url=ImageURL(url=f"data:{kind};base64,{encoded}"))


def _replaced(request: ChatRequest, resolved: dict[PartKey, Resolved]) -> ChatRequest:
    messages = [
        message.model_copy(
            update={
                "content": [
                    resolved[_part_key(part)] if isinstance(part, DataRefPart) else part
                    for part in message.content
                ]
            }
        )
        if isinstance(message, UserMessage) and not isinstance(message.content, str)
        else message
        for message in request.messages
    ]
    return request.model_copy(update={"messages": messages})


def _first_error(failed: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report for a group of failed resolutions: a `FerrymanError` if any
    (the others were cancelled because of it)."""
    errors = failed.subgroup(FerrymanError)
    if errors is not None:
        first = errors.exceptions[0]
        return _first_error(first) if isinstance(first, BaseExceptionGroup) else first
    return failed.exceptions[0]
