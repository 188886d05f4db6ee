"""The Google Cloud Storage backend on gcloud-aio-storage (async, aiohttp).

What it stores, per object: the bytes; the content type; custom metadata (the user's, as
given: GCS keeps names' case and any Unicode value); the SHA-256 as custom metadata
`ferryman-sha256`; tags as custom metadata `ferryman-tag-<name>` (GCS has no tags; both are
kept out of the metadata `head` reports). GCS's own CRC32C is sent with every upload and
checked by GCS.

Choices an operator should know:
- Puts stream: a body up to `chunk_size` is one upload request, a larger one a resumable
  upload in chunks with one chunk in memory. The SHA-256 is checked before the last chunk
  is sent; a mismatch, failure or cancellation cancels the session, so nothing is visible.
- `if_absent` is GCS's precondition `ifGenerationMatch=0` (atomic), on uploads and copies.
- `version` is the object's generation; `etag` GCS's ETag.
- `list` gives objects fully described (GCS's listing carries their metadata): no request
  per object. Page tokens wrap GCS's (`gcs:` + base64url).
- `copy` is objects.rewrite (metadata kept; big objects in several calls);
  `update_metadata` is one objects.patch.
- Presigned URLs are V4, signed locally with the service account's key; without a service
  account `presign` fails `invalid_request`.
- With `endpoint_url` (an emulator) requests are sent without credentials.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
from gcloud.aio.storage import Storage

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.gcs_errors import GcsErrorMapper
from storage_worker.backends.gcs_metadata import (
    conflict,
    custom_metadata,
    described,
    gcs_token,
    our_token,
    replacing,
)
from storage_worker.backends.gcs_settings import GcsSettings
from storage_worker.backends.gcs_signing import UrlSigner
from storage_worker.backends.gcs_upload import UploadTarget, upload
from storage_worker.backends.port import Body, Listing, Presigned, StoredObject

__all__ = ["GcsSettings", "GcsStore"]

_MAX_EMPTY_PAGES = 100
"""GCS may answer a page with no entry but a token: follow that many at most."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class GcsStore:
    """An `ObjectStore` on one GCS bucket (open with `GcsStore.open`)."""

    def __init__(
        self,
        name: str,
        settings: GcsSettings,
        http: aiohttp.ClientSession,
        storage: Storage,
        signer: UrlSigner,
        errors: GcsErrorMapper,
        clock: Callable[[], datetime],
    ) -> None:
        self.name = name
        self._settings = settings
        self._http = http
        self._storage = storage
        self._signer = signer
        self._errors = errors
        self._clock = clock

    @classmethod
    async def open(
        cls, name: str, settings: GcsSettings, *, clock: Callable[[], datetime] = _utc_now
    ) -> GcsStore:
        """Create the store's client (no request is sent yet).

        Raises:
            FerrymanError: `auth` when the service account is not a usable key.
        """
        account = settings.service_account or {}
        errors = GcsErrorMapper(name, (account.get("private_key"), account.get("private_key_id")))
        signer = UrlSigner(settings.bucket, settings.service_account, settings.endpoint_url)
        http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=settings.connect_timeout, sock_read=settings.read_timeout
            )
        )
        service_file = (
            None if settings.anonymous or not account else io.StringIO(json.dumps(account))
        )
        try:
            storage = Storage(
                service_file=service_file,
                session=http,
                api_root=settings.api_root,
                api_is_dev=settings.anonymous,
            )
        except (ValueError, KeyError, OSError):
            await http.close()
            raise FerrymanError(
                ErrorCode.AUTH, f"GCS backend {name!r}: unusable credentials", retryable=False
            ) from None
        return cls(name, settings, http, storage, signer, errors, clock)

    @property
    def bucket(self) -> str:
        """The bucket this store reads and writes."""
        return self._settings.bucket

    async def close(self) -> None:
        """Close the client and its connections."""
        await self._http.close()

    async def _auth_headers(self) -> dict[str, str]:
        if self._settings.anonymous:
            return {}
        with self._errors.mapped("access token"):
            token = await self._storage.token.get()
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def put(
        self,
        key: str,
        body: Body,
        *,
        content_type: str | None,
        metadata: dict[str, str],
        tags: dict[str, str],
        sha256: str,
        if_absent: bool = False,
    ) -> StoredObject:
        """Store `body` under `key` (see the module's notes).

        Raises:
            FerrymanError: `conflict` (`if_absent`), `precondition_failed` (the bytes'
                SHA-256 is not `sha256`), `invalid_request` (a reserved metadata name),
                `too_large`, `permission_denied`, `unavailable`, …
        """
        resource: dict[str, Any] = {"metadata": custom_metadata(metadata, tags, sha256)}
        if content_type:
            resource["contentType"] = content_type
        target = UploadTarget(
            self._storage, self._http, self._settings, self._errors, await self._auth_headers()
        )
        try:
            answer = await upload(
                target, key, body, resource=resource, sha256=sha256, if_absent=if_absent
            )
        except FerrymanError as exc:
            raise conflict(key) if if_absent and exc.status == 412 else exc from exc
        return self._described(answer, "put", key)

    def _described(self, resource: dict[str, Any], operation: str, key: str) -> StoredObject:
        with self._errors.mapped(operation, key):
            return described(resource)

    async def get(self, key: str) -> tuple[StoredObject, Body]:
        """The object and its bytes (that generation's), in chunks of `read_chunk_size`
        (close the body if you stop).

        Raises:
            FerrymanError: `not_found`, `permission_denied`, `unavailable`, …
        """
        resource = await self._resource(key, "get")
        found = self._described(resource, "get", key)
        url = f"{self._object_url(key)}"
        params = {"alt": "media"}
        if found.version:
            params["generation"] = found.version
        headers = await self._auth_headers()
        with self._errors.mapped("get", key):
            answer = await self._http.get(url, params=params, headers=headers)
        if answer.status >= 400:
            with self._errors.mapped("get", key):
                text = await answer.text()
            answer.release()
            where = f"GCS get of {key[:200]!r}"
            if answer.status == 404 and found.version:
                # The generation just described is gone: overwritten or deleted meanwhile.
                raise FerrymanError(
                    ErrorCode.UNAVAILABLE,
                    f"{where}: the object was replaced while being read",
                    retryable=True,
                )
            raise self._errors.from_status(answer.status, text, answer.headers, where)
        return found, self._chunks(key, answer)

    async def _chunks(self, key: str, answer: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            with self._errors.mapped("get", key):
                async for chunk in answer.content.iter_chunked(self._settings.read_chunk_size):
                    yield chunk
        finally:
            answer.release()

    async def head(self, key: str) -> StoredObject:
        """The object's description.

        Raises:
            FerrymanError: `not_found`, `permission_denied`, `unavailable`, …
        """
        return self._described(await self._resource(key, "head"), "head", key)

    async def _resource(self, key: str, operation: str) -> dict[str, Any]:
        with self._errors.mapped(operation, key):
            return await self._storage.download_metadata(
                self.bucket, key, timeout=int(self._settings.request_timeout)
            )

    def _object_url(self, key: str) -> str:
        bucket = quote(self.bucket, safe="")
        return f"{self._settings.api_root}/storage/v1/b/{bucket}/o/{quote(key, safe='')}"

    async def list(
        self, prefix: str, *, delimiter: str | None, limit: int, token: str | None
    ) -> Listing:
        """One page of objects.list (entries and prefixes together at most `limit`).

        Raises:
            FerrymanError: `invalid_request` (a token this backend did not give), …
        """
        params: dict[str, str] = {"prefix": prefix, "maxResults": str(limit)}
        if delimiter:
            params["delimiter"] = delimiter
        if token:
            params["pageToken"] = gcs_token(token)
        items: list[dict[str, Any]] = []
        prefixes: list[str] = []
        following: str | None = None
        for _ in range(_MAX_EMPTY_PAGES):
            with self._errors.mapped("list", prefix):
                answer = await self._storage.list_objects(
                    self.bucket, params=dict(params), timeout=int(self._settings.request_timeout)
                )
            items = answer.get("items") or []
            prefixes = answer.get("prefixes") or []
            following = answer.get("nextPageToken")
            if items or prefixes or not following:
                break
            params["pageToken"] = following
        objects = [self._described(item, "list", prefix) for item in items]
        return Listing(objects=objects, prefixes=sorted(prefixes), next_token=our_token(following))

    async def delete(self, key: str) -> bool:
        """Delete the object; whether it existed (GCS says so: 404 for none).

        Raises:
            FerrymanError: `permission_denied`, `unavailable`, …
        """
        try:
            with self._errors.mapped("delete", key):
                await self._storage.delete(
                    self.bucket, key, timeout=int(self._settings.request_timeout)
                )
        except FerrymanError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                return False
            raise
        return True

    async def copy(self, source: str, key: str, *, if_absent: bool = False) -> StoredObject:
        """Copy `source` to `key` in this bucket with objects.rewrite (metadata, tags and
        checksum kept).

        Raises:
            FerrymanError: `not_found` (no source), `conflict` (`if_absent`), …
        """
        if source == key:  # a rewrite onto itself changes nothing a caller can see
            found = await self.head(source)
            if if_absent:
                raise conflict(key)
            return found
        params = {"ifGenerationMatch": "0"} if if_absent else {}
        try:
            with self._errors.mapped("copy", key):
                answer = await self._storage.copy(
                    self.bucket,
                    source,
                    self.bucket,
                    new_name=key,
                    params=params,
                    timeout=int(self._settings.request_timeout),
                )
        except FerrymanError as exc:
            raise conflict(key) if if_absent and exc.status == 412 else exc from exc
        return self._described(answer.get("resource") or {}, "copy", key)

    async def update_metadata(
        self,
        key: str,
        *,
        metadata: dict[str, str] | None,
        tags: dict[str, str] | None,
        content_type: str | None,
    ) -> StoredObject:
        """Replace metadata and/or tags (None leaves them) and the content type, with one
        objects.patch.

        Raises:
            FerrymanError: `not_found`, `invalid_request` (a reserved metadata name), …
        """
        resource = await self._resource(key, "update metadata")
        current = self._described(resource, "update metadata", key)
        if metadata is None and tags is None and content_type is None:
            return current
        wanted = custom_metadata(
            current.metadata if metadata is None else metadata,
            current.tags if tags is None else tags,
            current.sha256,
        )
        patch: dict[str, Any] = {"metadata": replacing(resource.get("metadata"), wanted)}
        if content_type:
            patch["contentType"] = content_type
        # Only over what was read: a put or another update landing in between would otherwise
        # get this object's checksum, tags or metadata stamped on it.
        unchanged = {
            name: str(resource[field])
            for name, field in (
                ("ifGenerationMatch", "generation"),
                ("ifMetagenerationMatch", "metageneration"),
            )
            if resource.get(field) is not None
        }
        try:
            with self._errors.mapped("update metadata", key):
                answer = await self._storage.patch_metadata(
                    self.bucket,
                    key,
                    patch,
                    params=unchanged,
                    timeout=int(self._settings.request_timeout),
                )
        except FerrymanError as exc:
            if exc.code is not ErrorCode.PRECONDITION_FAILED:
                raise
            raise FerrymanError(
                ErrorCode.CONFLICT,
                f"GCS update metadata of {key[:200]!r}: the object changed meanwhile",
                retryable=True,
                upstream=exc.upstream,
            ) from None
        return self._described(answer, "update metadata", key)

    async def presign(
        self,
        key: str,
        method: Literal["GET", "PUT"],
        expires_in: int,
        *,
        content_type: str | None = None,
    ) -> Presigned:
        """A V4 URL to GET or PUT `key` (a PUT with `content_type` must send it).

        Raises:
            FerrymanError: `invalid_request` (no service account, or an expiry past 7 days).
        """
        url, headers = self._signer.sign(key, method, expires_in, content_type)
        expires_at = self._clock() + timedelta(seconds=expires_in)
        return Presigned(url=url, method=method, expires_at=expires_at, headers=headers)
