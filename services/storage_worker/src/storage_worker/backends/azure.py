"""The Azure Blob backend (Azure Storage, Azurite) on `azure.storage.blob.aio`.

What it stores, per blob: the bytes; the content type; user metadata and the SHA-256 as
metadata `ferryman-sha256` (names and values encoded as `azure_metadata` explains); tags as
blob index tags.

Choices an operator should know:
- Puts stream: a body up to `block_size` is one Put Blob, a larger one staged blocks (at
  most `max_blocks_in_flight` in memory) committed as one block list once the SHA-256 is
  checked. A failed, cancelled or mismatched put commits nothing; its staged blocks stay
  uncommitted (never visible) until Azure discards them. Two block puts racing on one key:
  the first commit wins, the other fails `conflict`, retryable.
- `if_absent` is Azure's conditional write (`If-None-Match: *` on Put Blob, Put Block List
  and Copy Blob, atomic); a block put and a copy also check first, to fail early.
- A blob put without a content type is `application/octet-stream` (Azure's default).
- `head` and `get` fetch tags with a second request only when Azure reports a tag count;
  `list` describes every object fully from the listing (metadata and tags included).
- Page tokens wrap Azure's markers (`az:` + base64url): any other token is refused.
- `version` is the version ID on an account with versioning, else the ETag (unquoted).
- `copy` is Copy Blob (metadata and content type go with it, tags are set from the
  source's), conditional on the source's ETag, waited for when Azure reports it pending;
  `update_metadata` sets the headers, metadata and tags in place, each conditional on the
  ETag read first.
- `presign` signs a service SAS with the account key (no key: no URLs).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from azure.core import MatchConditions
from azure.storage.blob import BlobProperties
from azure.storage.blob.aio import BlobClient, ContainerClient

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.azure_errors import AzureErrorMapper
from storage_worker.backends.azure_metadata import (
    AZURE_DEFAULT_CONTENT_TYPE,
    azure_marker,
    azure_metadata,
    checked_tags,
    described,
    our_token,
    own_metadata,
)
from storage_worker.backends.azure_sas import signed
from storage_worker.backends.azure_settings import AzureSettings
from storage_worker.backends.azure_transfer import NewBlob, block_put, server_copy, whole_put
from storage_worker.backends.port import Body, Listing, Presigned, StoredObject
from storage_worker.backends.s3_metadata import conflict, unquoted
from storage_worker.backends.s3_parts import PartReader

__all__ = ["AzureSettings", "AzureStore"]

MAX_PRESIGN_SECONDS = 7 * 24 * 3600
"""The longest expiry signed (the policy's limit too)."""
_DETAILS = ["metadata", "tags"]
_HTTP_LOGGER = "azure.core.pipeline.policies.http_logging_policy"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _shared_key(settings: AzureSettings) -> Any:
    """The account key as the SDK takes it (with the account's name, when given)."""
    if settings.account_name:
        return {"account_name": settings.account_name, "account_key": settings.account_key}
    return settings.account_key


class AzureStore:
    """An `ObjectStore` on one Azure Blob container (open with `AzureStore.open`)."""

    def __init__(
        self,
        name: str,
        settings: AzureSettings,
        container: ContainerClient,
        errors: AzureErrorMapper,
        clock: Callable[[], datetime],
    ) -> None:
        self.name = name
        self._settings = settings
        self._container = container
        self._errors = errors
        self._clock = clock

    @classmethod
    async def open(
        cls, name: str, settings: AzureSettings, *, clock: Callable[[], datetime] = _utc_now
    ) -> AzureStore:
        """Create the store's client (no request is sent yet).

        Raises:
            FerrymanError: `invalid_request` when the SDK refuses the settings (the message
                shows no credential).
        """
        errors = AzureErrorMapper(name, settings.secrets())
        options = settings.client_options()
        http_log = logging.getLogger(_HTTP_LOGGER)
        if http_log.level == logging.NOTSET:  # two INFO lines per request, unless asked for
            http_log.setLevel(logging.WARNING)
        try:
            if settings.connection_string is not None:
                container = ContainerClient.from_connection_string(
                    settings.connection_string, settings.container, **options
                )
            else:
                container = ContainerClient(
                    settings.account_url or "",
                    settings.container,
                    credential=_shared_key(settings),
                    **options,
                )
        except (ValueError, TypeError) as exc:
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"backend {name!r}: the Azure settings are refused ({type(exc).__name__})",
                retryable=False,
                upstream=name,
            ) from None
        return cls(name, settings, container, errors, clock)

    @property
    def container(self) -> str:
        """The container this store reads and writes."""
        return self._settings.container

    async def close(self) -> None:
        """Close the client and its connections."""
        await self._container.close()

    def _blob(self, key: str) -> BlobClient:
        return self._container.get_blob_client(key)

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
                SHA-256 is not `sha256`), `invalid_request` (metadata or tags Azure
                refuses), `too_large`, `permission_denied`, `unavailable`, …
        """
        new = NewBlob(azure_metadata(metadata, sha256), content_type, checked_tags(tags), if_absent)
        blob = self._blob(key)
        reader = PartReader(body, self._settings.block_size)
        try:
            single = await reader.read_if_single()
            if single is not None:
                size = len(single)
                answer = await whole_put(blob, self._errors, single, new, sha256)
            else:
                if if_absent:  # fail before uploading gigabytes; the commit stays atomic
                    await self._refuse_existing(key)
                size, answer = await block_put(
                    blob, self._errors, reader, new, sha256, self._settings.max_blocks_in_flight
                )
        except FerrymanError as exc:
            raise conflict(key) if if_absent and exc.status in (409, 412) else exc from None
        etag = unquoted(answer.get("etag"))
        return StoredObject(
            key=key,
            size=size,
            content_type=content_type or AZURE_DEFAULT_CONTENT_TYPE,
            sha256=sha256,
            etag=etag,
            version=answer.get("version_id") or etag,
            last_modified=answer.get("last_modified"),
            metadata=dict(metadata),
            tags=dict(tags),
        )

    async def get(self, key: str) -> tuple[StoredObject, Body]:
        """The object and its bytes, in chunks of `chunk_size` (close the body if you stop).

        Raises:
            FerrymanError: `not_found`, `permission_denied`, `unavailable`, …
        """
        with self._errors.mapped("get", key):
            download = await self._blob(key).download_blob()
        props = download.properties
        return described(key, props, await self._tags(key, props)), self._chunks(key, download)

    async def _chunks(self, key: str, download: Any) -> AsyncIterator[bytes]:
        size = self._settings.chunk_size
        try:
            with self._errors.mapped("get", key):
                async for block in download.chunks():
                    for start in range(0, len(block), size):
                        yield block[start : start + size]
        except FerrymanError as exc:
            if exc.code is not ErrorCode.PRECONDITION_FAILED:
                raise
            raise FerrymanError(  # every range after the first is read from the same ETag
                ErrorCode.UNAVAILABLE,
                f"{key[:200]!r} was replaced while being read; read it again",
                upstream=self.name,
            ) from None

    async def head(self, key: str) -> StoredObject:
        """The object's description, tags included.

        Raises:
            FerrymanError: `not_found`, `permission_denied`, `unavailable`, …
        """
        props = await self._properties(key)
        return described(key, props, await self._tags(key, props))

    async def _properties(self, key: str, operation: str = "head") -> Any:
        with self._errors.mapped(operation, key):
            return await self._blob(key).get_blob_properties()

    async def _tags(self, key: str, props: Any) -> dict[str, str]:
        if not props.tag_count:
            return {}
        with self._errors.mapped("get tags", key):
            return dict(await self._blob(key).get_blob_tags())

    async def list(
        self, prefix: str, *, delimiter: str | None, limit: int, token: str | None
    ) -> Listing:
        """One page of List Blobs, metadata and tags included (a page Azure sends empty
        with a marker is followed: a page here is empty only at the end).

        Raises:
            FerrymanError: `invalid_request` (a token this backend did not give), …
        """
        marker = azure_marker(token) if token else None
        objects: list[StoredObject] = []
        prefixes: list[str] = []
        with self._errors.mapped("list", prefix):
            while True:
                if delimiter:
                    found = self._container.walk_blobs(
                        name_starts_with=prefix or None,
                        include=_DETAILS,
                        delimiter=delimiter,
                        results_per_page=limit,
                    )
                else:
                    found = self._container.list_blobs(
                        name_starts_with=prefix or None, include=_DETAILS, results_per_page=limit
                    )
                pages: Any = found.by_page(continuation_token=marker)
                async for page in pages:
                    async for item in page:
                        if isinstance(item, BlobProperties):
                            objects.append(described(item.name, item, dict(item.tags or {})))
                        else:
                            prefixes.append(item.name)
                    break
                marker = pages.continuation_token
                if objects or prefixes or not marker:
                    break
        return Listing(objects=objects, prefixes=prefixes, next_token=our_token(marker))

    async def delete(self, key: str) -> bool:
        """Delete the blob (and its snapshots); whether it existed.

        Raises:
            FerrymanError: `permission_denied`, `unavailable`, …
        """
        try:
            with self._errors.mapped("delete", key):
                await self._blob(key).delete_blob(delete_snapshots="include")
        except FerrymanError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                return False
            raise
        return True

    async def copy(self, source: str, key: str, *, if_absent: bool = False) -> StoredObject:
        """Copy `source` to `key` server-side (see the module's notes).

        Raises:
            FerrymanError: `not_found` (no source), `conflict` (`if_absent`),
                `precondition_failed` (the source changed meanwhile), …
        """
        props = await self._properties(source, "copy")
        tags = await self._tags(source, props)
        if if_absent:
            await self._refuse_existing(key)
        try:
            await server_copy(
                self._blob(source),
                self._blob(key),
                self._errors,
                source_etag=props.etag,
                tags=tags,
                if_absent=if_absent,
                timeout=self._settings.copy_timeout,
            )
        except FerrymanError as exc:
            raise conflict(key) if if_absent and exc.code is ErrorCode.CONFLICT else exc from None
        return await self.head(key)

    async def update_metadata(
        self,
        key: str,
        *,
        metadata: dict[str, str] | None,
        tags: dict[str, str] | None,
        content_type: str | None,
    ) -> StoredObject:
        """Replace the metadata and/or tags (None leaves them) and the content type; a
        change by someone else meanwhile fails it.

        Raises:
            FerrymanError: `not_found`, `conflict` (changed meanwhile; retryable),
                `invalid_request` (metadata or tags Azure refuses), …
        """
        props = await self._properties(key, "update metadata")
        blob = self._blob(key)
        sent = (
            None if metadata is None else azure_metadata(metadata, own_metadata(props.metadata)[1])
        )
        checked = None if tags is None else checked_tags(tags)
        etag = props.etag
        try:
            if content_type is not None:
                headers = props.content_settings
                headers.content_type = content_type  # the other headers are sent back as read
                with self._errors.mapped("set content type", key):
                    answer = await blob.set_http_headers(
                        headers, etag=etag, match_condition=MatchConditions.IfNotModified
                    )
                etag = answer.get("etag") or etag
            if sent is not None:
                with self._errors.mapped("set metadata", key):
                    await blob.set_blob_metadata(
                        sent, etag=etag, match_condition=MatchConditions.IfNotModified
                    )
        except FerrymanError as exc:
            if exc.code is not ErrorCode.PRECONDITION_FAILED:
                raise
            raise FerrymanError(
                ErrorCode.CONFLICT,
                f"{key[:200]!r} changed while its metadata was being updated; try again",
                retryable=True,
                upstream=self.name,
            ) from None
        if checked is not None:
            with self._errors.mapped("set tags", key):
                await blob.set_blob_tags(checked)
        return await self.head(key)

    async def presign(
        self,
        key: str,
        method: Literal["GET", "PUT"],
        expires_in: int,
        *,
        content_type: str | None = None,
    ) -> Presigned:
        """A service SAS URL to GET or PUT `key`; a PUT must send `Presigned.headers`
        (`x-ms-blob-type: BlockBlob`, and the content type when given).

        Raises:
            FerrymanError: `invalid_request` (an expiry past 7 days, or no account key to
                sign with).
        """
        if not 1 <= expires_in <= MAX_PRESIGN_SECONDS:
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"Azure URLs here expire within 1 to {MAX_PRESIGN_SECONDS} seconds,"
                f" not {expires_in}",
            )
        account_key = getattr(self._container.credential, "account_key", None)
        if not account_key:
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"backend {self.name!r} has no account key to sign URLs with",
                retryable=False,
            )
        expires_at = self._clock() + timedelta(seconds=expires_in)
        return signed(self._blob(key), account_key, method, expires_at, content_type)

    async def _refuse_existing(self, key: str) -> None:
        try:
            await self._properties(key)
        except FerrymanError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                return
            raise
        raise conflict(key)
