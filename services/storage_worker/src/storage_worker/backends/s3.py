"""The S3 backend (AWS S3 and S3-compatible stores: MinIO, R2, moto) on aiobotocore.

What it stores, per object: the bytes; the content type; user metadata (see
`s3_metadata`); tags; and the SHA-256 twice: as user metadata `ferryman-sha256` (hex, what
`head` reports, everywhere) and as S3's native `ChecksumSHA256` (verified by S3 on upload;
for a multipart upload it is S3's checksum of the parts' checksums).

Choices an operator should know:
- Puts stream: a body up to `part_size` is one PutObject, a larger one a multipart upload
  with at most `max_parts_in_flight` parts in memory. The SHA-256 announced is checked
  before anything becomes visible; a mismatch, failure or cancellation aborts the upload.
- `if_absent` is S3's conditional write (`If-None-Match: *` on PutObject and
  CompleteMultipartUpload, atomic). A copy also checks the destination with a HEAD first:
  moto (and some S3-compatible stores) ignore `If-None-Match` on CopyObject, so there the
  check is racy. With `conditional_writes=False` every `if_absent` is that racy HEAD check.
- `head` and `get` fetch tags with a second request only when S3 reports a tag count
  (`x-amz-tagging-count`). `list` describes every object fully, as head does: a HEAD per
  listed object (`list_concurrency` at a time), since ListObjectsV2 carries no metadata;
  with `list_details=False` it gives only key, size, ETag and time.
- Page tokens wrap S3's (`s3:` + base64url): a token it did not hand out is refused as
  `invalid_request` before reaching S3 (moto answers such a token with a 500).
- `version` is the VersionId on a versioned bucket, else the ETag (unquoted).
- `delete` HEADs first to tell whether the object existed (S3's DeleteObject does not say);
  the answer is racy, the deletion is not.
- `copy` is CopyObject (metadata, tags and checksum kept) up to `copy_threshold` (S3's limit
  is 5 GiB) and ranged UploadPartCopy parts above it; `update_metadata` copies the object
  onto itself with `MetadataDirective=REPLACE`, or only PutObjectTagging for tags alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiobotocore.session import get_session

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.port import Body, Listing, Presigned, StoredObject
from storage_worker.backends.s3_errors import S3ErrorMapper
from storage_worker.backends.s3_metadata import (
    conflict,
    create_args,
    described,
    encoded_metadata,
    lowercased_names,
    our_token,
    s3_token,
    tagging,
    unquoted,
    version_of,
)
from storage_worker.backends.s3_settings import S3Settings
from storage_worker.backends.s3_transfer import (
    PartReader,
    S3Bucket,
    copy_within,
    multipart_put,
    whole_put,
)

__all__ = ["S3Settings", "S3Store"]

MAX_PRESIGN_SECONDS = 7 * 24 * 3600
"""SigV4's longest expiry."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class S3Store:
    """An `ObjectStore` on one S3 bucket, with one client (open with `S3Store.open`)."""

    def __init__(
        self,
        name: str,
        settings: S3Settings,
        client: Any,
        errors: S3ErrorMapper,
        exits: AsyncExitStack,
        clock: Callable[[], datetime],
    ) -> None:
        self.name = name
        self._settings = settings
        self._client = client
        self._exits = exits
        self._clock = clock
        self._errors = errors
        self._bucket = S3Bucket(
            client, settings.bucket, errors, settings.native_checksums, settings.conditional_writes
        )

    @classmethod
    async def open(
        cls, name: str, settings: S3Settings, *, clock: Callable[[], datetime] = _utc_now
    ) -> S3Store:
        """Create the store's client (no request is sent yet).

        Raises:
            FerrymanError: `invalid_request` when botocore refuses the settings.
        """
        exits = AsyncExitStack()
        secrets = (settings.access_key_id, settings.secret_access_key, settings.session_token)
        errors = S3ErrorMapper(name, secrets)
        with errors.mapped("client setup"):
            client = await exits.enter_async_context(
                get_session().create_client(
                    "s3",
                    endpoint_url=settings.endpoint_url,
                    region_name=settings.region,
                    aws_access_key_id=settings.access_key_id,
                    aws_secret_access_key=settings.secret_access_key,
                    aws_session_token=settings.session_token,
                    config=settings.client_config(),
                )
            )
        return cls(name, settings, client, errors, exits, clock)

    @property
    def bucket(self) -> str:
        """The bucket this store reads and writes."""
        return self._settings.bucket

    async def close(self) -> None:
        """Close the client and its connections."""
        await self._exits.aclose()

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
                SHA-256 is not `sha256`), `too_large`, `permission_denied`, `unavailable`, …
        """
        names = lowercased_names(metadata)
        create: dict[str, Any] = {"Metadata": encoded_metadata(names, sha256)}
        if content_type:
            create["ContentType"] = content_type
        if tags:
            create["Tagging"] = tagging(tags)
        conditional = if_absent and self._settings.conditional_writes
        if if_absent and not conditional:
            await self._refuse_existing(key)
        reader = PartReader(body, self._settings.part_size)
        try:
            single = await reader.read_if_single()
            if single is not None:
                size = len(single)
                answer = await whole_put(self._bucket, key, single, create, sha256, if_absent)
            else:
                if conditional:  # fail before uploading gigabytes; the write stays atomic
                    await self._refuse_existing(key)
                size, answer = await multipart_put(
                    self._bucket,
                    key,
                    reader=reader,
                    create_args=create,
                    sha256=sha256,
                    if_absent=if_absent,
                    max_in_flight=self._settings.max_parts_in_flight,
                )
        except FerrymanError as exc:
            raise conflict(key) if if_absent and exc.status == 412 else exc from exc
        etag = unquoted(answer.get("ETag"))
        return StoredObject(
            key=key,
            size=size,
            content_type=content_type,
            sha256=sha256,
            etag=etag,
            version=version_of(answer.get("VersionId"), etag),
            metadata=names,
            tags=dict(tags),
        )

    async def get(self, key: str) -> tuple[StoredObject, Body]:
        """The object and its bytes, in chunks of `chunk_size` (close the body if you stop).

        Raises:
            FerrymanError: `not_found`, `permission_denied`, `unavailable`, …
        """
        with self._errors.mapped("get", key):
            answer = await self._client.get_object(Bucket=self._settings.bucket, Key=key)
        body = answer["Body"]
        try:
            found = described(key, answer, await self._tags(key, answer))
        except BaseException:
            await body.aclose()
            raise
        return found, self._chunks(key, body)

    async def _chunks(self, key: str, body: Any) -> AsyncIterator[bytes]:
        try:
            with self._errors.mapped("get", key):
                async for chunk in body.iter_chunks(self._settings.chunk_size):
                    yield chunk
        finally:
            await body.aclose()

    async def head(self, key: str) -> StoredObject:
        """The object's description, tags included.

        Raises:
            FerrymanError: `not_found`, `permission_denied`, `unavailable`, …
        """
        answer, tags = await self._head(key)
        return described(key, answer, tags)

    async def _head(
        self, key: str, operation: str = "head"
    ) -> tuple[dict[str, Any], dict[str, str]]:
        with self._errors.mapped(operation, key):
            answer = await self._client.head_object(
                Bucket=self._settings.bucket, Key=key, ChecksumMode="ENABLED"
            )
        return answer, await self._tags(key, answer)

    async def _tags(self, key: str, answer: dict[str, Any]) -> dict[str, str]:
        if not answer.get("TagCount"):
            return {}
        with self._errors.mapped("get tags", key):
            found = await self._client.get_object_tagging(Bucket=self._settings.bucket, Key=key)
        return {tag["Key"]: tag["Value"] for tag in found.get("TagSet", [])}

    async def list(
        self, prefix: str, *, delimiter: str | None, limit: int, token: str | None
    ) -> Listing:
        """One page of ListObjectsV2 (details per `list_details`).

        Raises:
            FerrymanError: `invalid_request` (a token S3 refuses), `unavailable`, …
        """
        args: dict[str, Any] = {"Bucket": self._settings.bucket, "Prefix": prefix, "MaxKeys": limit}
        if delimiter:
            args["Delimiter"] = delimiter
        if token:
            args["ContinuationToken"] = s3_token(token)
        with self._errors.mapped("list", prefix):
            answer = await self._client.list_objects_v2(**args)
        objects = [
            StoredObject(
                key=entry["Key"],
                size=entry["Size"],
                etag=unquoted(entry.get("ETag")),
                last_modified=entry.get("LastModified"),
            )
            for entry in answer.get("Contents", [])
        ]
        if self._settings.list_details:
            gate = asyncio.Semaphore(self._settings.list_concurrency)
            objects = list(await asyncio.gather(*(self._detailed(e, gate) for e in objects)))
        return Listing(
            objects=objects,
            prefixes=[entry["Prefix"] for entry in answer.get("CommonPrefixes", [])],
            next_token=our_token(answer.get("NextContinuationToken"), answer.get("IsTruncated")),
        )

    async def _detailed(self, entry: StoredObject, gate: asyncio.Semaphore) -> StoredObject:
        try:
            async with gate:
                return await self.head(entry.key)
        except FerrymanError as exc:
            if exc.code is ErrorCode.NOT_FOUND:  # deleted since listed
                return entry
            raise

    async def delete(self, key: str) -> bool:
        """Delete the object; whether it existed (from a HEAD just before).

        Raises:
            FerrymanError: `permission_denied`, `unavailable`, …
        """
        if not await self._exists(key):
            return False
        with self._errors.mapped("delete", key):
            await self._client.delete_object(Bucket=self._settings.bucket, Key=key)
        return True

    async def copy(self, source: str, key: str, *, if_absent: bool = False) -> StoredObject:
        """Copy `source` to `key` in this bucket, server-side.

        Raises:
            FerrymanError: `not_found` (no source), `conflict` (`if_absent`), …
        """
        answer, tags = await self._head(source, "copy (source)")
        if if_absent:
            await self._refuse_existing(key)
        found = described(source, answer, tags)
        if source == key:  # S3 refuses a copy onto itself that changes nothing
            return found
        create = {"Metadata": answer.get("Metadata", {}), **create_args(answer, tags)}
        try:
            result = await self._copy(
                source, key, found, {"MetadataDirective": "COPY"}, create, if_absent
            )
        except FerrymanError as exc:
            raise conflict(key) if if_absent and exc.status == 412 else exc from exc
        etag = unquoted(result.get("ETag"))
        version = version_of(result.get("VersionId"), etag)
        modified = result.get("LastModified")
        return replace(found, key=key, etag=etag, version=version, last_modified=modified)

    async def _copy(
        self,
        source: str,
        key: str,
        found: StoredObject,
        copy_args: dict[str, Any],
        create: dict[str, Any],
        if_absent: bool,
    ) -> dict[str, Any]:
        return await copy_within(
            self._bucket,
            source,
            key,
            size=found.size,
            etag=found.etag,
            copy_args=copy_args,
            create_args=create,
            if_absent=if_absent,
            threshold=self._settings.copy_threshold,
            part_size=self._settings.copy_part_size,
            max_in_flight=self._settings.max_parts_in_flight,
        )

    async def update_metadata(
        self,
        key: str,
        *,
        metadata: dict[str, str] | None,
        tags: dict[str, str] | None,
        content_type: str | None,
    ) -> StoredObject:
        """Replace metadata and/or tags (None leaves them) and the content type.

        Raises:
            FerrymanError: `not_found`, `permission_denied`, `unavailable`, …
        """
        if metadata is None and content_type is None:
            if tags is not None:
                await self._put_tags(key, tags)
            return await self.head(key)
        answer, current_tags = await self._head(key, "update metadata")
        current = described(key, answer, current_tags)
        names = lowercased_names(current.metadata if metadata is None else metadata)
        replaced: dict[str, Any] = {"Metadata": encoded_metadata(names, current.sha256)}
        if content_type or current.content_type:
            replaced["ContentType"] = content_type or current.content_type
        copy_args: dict[str, Any] = {"MetadataDirective": "REPLACE", **replaced}
        if tags is not None:
            copy_args |= {"TaggingDirective": "REPLACE", "Tagging": tagging(tags)}
        create = replaced | create_args({}, current_tags if tags is None else tags)
        await self._copy(key, key, current, copy_args, create, if_absent=False)
        return await self.head(key)

    async def _put_tags(self, key: str, tags: dict[str, str]) -> None:
        tag_set = [{"Key": name, "Value": value} for name, value in tags.items()]
        with self._errors.mapped("put tags", key):
            await self._client.put_object_tagging(
                Bucket=self._settings.bucket, Key=key, Tagging={"TagSet": tag_set}
            )

    async def presign(
        self,
        key: str,
        method: Literal["GET", "PUT"],
        expires_in: int,
        *,
        content_type: str | None = None,
    ) -> Presigned:
        """A SigV4 URL to GET or PUT `key` (a PUT with `content_type` must send it).

        Raises:
            FerrymanError: `invalid_request` (an expiry past 7 days), …
        """
        if not 1 <= expires_in <= MAX_PRESIGN_SECONDS:
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"S3 URLs expire within 1 to {MAX_PRESIGN_SECONDS} seconds, not {expires_in}",
            )
        params: dict[str, Any] = {"Bucket": self._settings.bucket, "Key": key}
        headers: dict[str, str] = {}
        if method == "PUT" and content_type:
            params["ContentType"] = content_type
            headers["Content-Type"] = content_type
        operation = "get_object" if method == "GET" else "put_object"
        with self._errors.mapped("presign", key):
            url = await self._client.generate_presigned_url(
                operation, Params=params, ExpiresIn=expires_in, HttpMethod=method
            )
        expires_at = self._clock() + timedelta(seconds=expires_in)
        return Presigned(url=url, method=method, expires_at=expires_at, headers=headers)

    async def _exists(self, key: str) -> bool:
        try:
            with self._errors.mapped("head", key):
                await self._client.head_object(Bucket=self._settings.bucket, Key=key)
        except FerrymanError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                return False
            raise
        return True

    async def _refuse_existing(self, key: str) -> None:
        if await self._exists(key):
            raise conflict(key)
