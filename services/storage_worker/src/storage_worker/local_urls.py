"""The worker's `/objects` route: signed URLs of local backends (see `signed_urls`), an ASGI
app mounted on the worker's own HTTP server next to `/health` and `/metrics`.

GET streams the object (a single byte `Range` is served); PUT streams the body into the
store: the signed content type, the tenant's size limit and allowed content types (detected
from the bytes) are enforced, the upload must be as long as its `Content-Length`, and the
object's `created` event is published like a put request's. Both stream with bounded
memory: the server stops reading the socket while the store writes (and the store writes
1 MiB at a time), and a download waits for the client to take each 1 MiB chunk. A refused
URL touches nothing: it is verified before a backend is looked at.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.errors import KafkaError  # pyright: ignore[reportMissingTypeStubs]
from faststream.asgi.types import Receive, Scope, Send

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman.contracts.storage import PutCompleted
from storage_worker.backends.local import LocalStore
from storage_worker.backends.port import ObjectStore, StoredObject, close_body
from storage_worker.content_types import allowed, compatible, detect
from storage_worker.events import ObjectEvents
from storage_worker.keys import KeyRefused, normalise_key
from storage_worker.local_http import (
    HttpRefusal,
    Response,
    Unsatisfiable,
    Upload,
    byte_range,
    content_length,
    headers_of,
    query_of,
    slice_of,
)
from storage_worker.object_info import object_info
from storage_worker.pipelines.triggers import UploadTriggers
from storage_worker.policy import Policy, TenantSpace, space_of
from storage_worker.signed_urls import UrlGrant, UrlRefused, UrlSigner

logger = logging.getLogger(__name__)

SHA256_HEADER = "x-ferryman-sha256"
"""An upload may send its SHA-256 (hex): the bytes are then verified against it."""
_SNIFF_BYTES = 8192
_SHA256 = re.compile(r"[0-9a-f]{64}")
_STATUS = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.PRECONDITION_FAILED: 412,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
}


class LocalObjectUrls:
    """The ASGI app of `/objects`.

    Args:
        signer: verifies the URLs (the key the local backends sign with).
        stores: the open backend of a name (`Stores.get`).
        policy: the active policy (an upload's tenant space and limits, checked again).
        events: publishes the `created` event of an upload.
        triggers: asks for the `on_upload` pipelines of an upload (None: none run).
    """

    def __init__(
        self,
        signer: UrlSigner,
        stores: Callable[[str], Awaitable[ObjectStore]],
        *,
        policy: Callable[[], Policy],
        events: ObjectEvents,
        triggers: UploadTriggers | None = None,
    ) -> None:
        self._signer = signer
        self._stores = stores
        self._policy = policy
        self._events = events
        self._triggers = triggers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = Response(send)
        try:
            headers = headers_of(scope)
            method = str(scope.get("method", ""))
            grant = self._signer.verify(query_of(scope), method, headers.get("content-type"))
            space = self._space(grant)
            store = await self._store(grant.backend)
            if grant.method == "GET":
                await self._download(store, grant, headers, receive, response)
            else:
                await self._upload(store, grant, space, headers, receive, response)
        except UrlRefused as exc:
            await response.error(403, ErrorCode.PERMISSION_DENIED, str(exc))
        except HttpRefusal as exc:
            await response.error(exc.status, exc.code, exc.message)
        except FerrymanError as exc:
            await response.error(_STATUS.get(exc.code, 500), exc.code, exc.message)
        except Exception:
            logger.exception("a signed URL request failed")
            await response.error(500, ErrorCode.INTERNAL, "the worker failed: see its log")

    def _space(self, grant: UrlGrant) -> TenantSpace | None:
        """The tenant's space under the current policy (a URL never outlives the tenant's
        access), after the key passed the key rules again."""
        try:
            if normalise_key(grant.key) != grant.key:
                raise HttpRefusal(403, ErrorCode.PERMISSION_DENIED, "the key is not normalised")
        except KeyRefused as exc:
            raise HttpRefusal(403, ErrorCode.PERMISSION_DENIED, str(exc)) from None
        if grant.tenant is None:
            return None
        space = space_of(self._policy(), grant.tenant, grant.backend)
        if not grant.key.startswith(space.prefix):
            raise HttpRefusal(
                403, ErrorCode.PERMISSION_DENIED, "the object is outside the tenant's space"
            )
        return space

    async def _store(self, backend: str) -> LocalStore:
        try:
            opened = await self._stores(backend)
        except FerrymanError:
            opened = None
        # The store itself, not its breaker (`ResilientStore`): uploads compute their
        # checksum as they are written, which the port's put does not offer.
        store = getattr(opened, "inner", opened)
        if not isinstance(store, LocalStore):
            raise HttpRefusal(404, ErrorCode.NOT_FOUND, f"no local backend {backend[:100]!r}")
        return store

    async def _download(
        self,
        store: LocalStore,
        grant: UrlGrant,
        headers: dict[str, str],
        receive: Receive,
        response: Response,
    ) -> None:
        stored, body = await store.get(grant.key)
        try:
            size = stored.size
            start, end = 0, size
            status = 200
            fields = {
                "content-type": stored.content_type or "application/octet-stream",
                "accept-ranges": "bytes",
                "cache-control": "private",
                # A tenant's HTML or SVG is data here, never a page of the worker's origin.
                "x-content-type-options": "nosniff",
                "content-security-policy": "sandbox; default-src 'none'",
            }
            if stored.etag:
                fields["etag"] = f'"{stored.etag}"'
            try:
                wanted = byte_range(headers.get("range"), size)
            except Unsatisfiable:
                refusal = {
                    "code": ErrorCode.INVALID_REQUEST,
                    "message": "the range is past the end",
                }
                await response.json(416, {"error": refusal}, {"content-range": f"bytes */{size}"})
                return
            if wanted is not None:
                start, end = wanted
                status = 206
                fields["content-range"] = f"bytes {start}-{end - 1}/{size}"
            fields["content-length"] = str(end - start)
            await response.start(status, fields)
            await response.stream(slice_of(body, start, end), receive)
        finally:
            await close_body(body)

    async def _upload(
        self,
        store: LocalStore,
        grant: UrlGrant,
        space: TenantSpace | None,
        headers: dict[str, str],
        receive: Receive,
        response: Response,
    ) -> None:
        length = content_length(headers)
        limits = [grant.max_bytes, space.rule.max_object_bytes if space else None]
        limit = min((n for n in limits if n is not None), default=None)
        if limit is not None and length > limit:
            raise HttpRefusal(
                413,
                ErrorCode.TOO_LARGE,
                f"{length} bytes is over the tenant's object size limit ({limit})",
            )
        sha256 = headers.get(SHA256_HEADER)
        if sha256 is not None and not _SHA256.fullmatch(sha256):
            raise HttpRefusal(400, ErrorCode.INVALID_REQUEST, f"{SHA256_HEADER} is not hex SHA-256")
        upload = Upload(receive, length)
        head = await upload.head(_SNIFF_BYTES)
        detected = detect(head)
        declared = headers.get("content-type")
        if declared is not None and not compatible(declared, detected):
            raise HttpRefusal(
                400, ErrorCode.INVALID_REQUEST, f"the content is {detected}, not {declared[:100]}"
            )
        if space is not None and not allowed(detected, space.rule.content_types):
            raise HttpRefusal(
                403,
                ErrorCode.PERMISSION_DENIED,
                f"content type {detected} is not allowed for this tenant",
            )
        stored = await store.put(
            grant.key,
            upload.chunks(head),
            content_type=declared or detected,
            metadata={},
            tags={},
            sha256=sha256,
        )
        document = await self._announce(grant, space, stored)
        fields = {"etag": f'"{stored.etag}"'} if stored.etag else {}
        await response.json(200, document, fields)

    async def _announce(
        self, grant: UrlGrant, space: TenantSpace | None, stored: StoredObject
    ) -> dict[str, Any]:
        """The object's `created` event and pipelines (a tenant's upload), and what the
        client is told."""
        if space is None:
            return {"key": stored.key, "size": stored.size, "sha256": stored.sha256}
        info = object_info(space, stored)
        request = grant.request or f"upload-{uuid.uuid4().hex}"
        try:
            await self._events.created(space.tenant, info, "put", request)
            if self._triggers is not None:
                await self._triggers.written(space.tenant, space.rule, PutCompleted(object=info))
        except KafkaError:
            raise FerrymanError(
                ErrorCode.UNAVAILABLE,
                "the object was stored but its event was not published: upload it again",
            ) from None
        return {"object": info.model_dump(mode="json")}
