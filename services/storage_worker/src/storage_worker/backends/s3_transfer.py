"""S3 transfers: a streamed put (one PutObject, or a multipart upload with a bounded number
of parts in memory), and a server-side copy (CopyObject, or ranged `UploadPartCopy` parts
for objects past CopyObject's 5 GiB limit). Either completes whole or is aborted: a failure
or a cancellation leaves no upload (and no stored parts) behind."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.s3_errors import S3ErrorMapper
from storage_worker.backends.s3_parts import InFlight, PartBody, PartReader

MIN_PART_SIZE = 5 * 1024 * 1024
"""S3's smallest part (every part but the last)."""
MAX_PARTS = 10_000

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class S3Bucket:
    """A client bound to one bucket, with how the store talks to it."""

    client: Any
    bucket: str
    errors: S3ErrorMapper
    native_checksums: bool
    conditional_writes: bool


def checksum_b64(part: bytes | bytearray) -> str:
    """The base64 SHA-256 S3 expects in `ChecksumSHA256`."""
    return base64.b64encode(hashlib.sha256(part).digest()).decode()


def mismatch(key: str, expected: str, actual: str) -> FerrymanError:
    """The error for bytes whose SHA-256 is not the one announced (nothing was stored)."""
    return FerrymanError(
        ErrorCode.PRECONDITION_FAILED,
        f"the bytes for {key[:200]!r} have SHA-256 {actual}, not the {expected} announced;"
        " nothing was stored",
    )


async def whole_put(
    target: S3Bucket,
    key: str,
    data: bytearray,
    create_args: dict[str, Any],
    sha256: str,
    if_absent: bool,
) -> dict[str, Any]:
    """Store `data` with one PutObject once its SHA-256 is checked.

    Raises:
        FerrymanError: `precondition_failed` (checksum mismatch), or the mapped S3 error
            (status 412: `if_absent` and the key exists).
    """
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise mismatch(key, sha256, actual)
    args: dict[str, Any] = {"Bucket": target.bucket, "Key": key, **create_args}
    if target.native_checksums:
        args |= {"ChecksumAlgorithm": "SHA256", "ChecksumSHA256": checksum_b64(data)}
    if if_absent and target.conditional_writes:
        args["IfNoneMatch"] = "*"
    with PartBody(data) as body, target.errors.mapped("put", key):
        return await target.client.put_object(Body=body, **args)


async def multipart_put(
    target: S3Bucket,
    key: str,
    *,
    reader: PartReader,
    create_args: dict[str, Any],
    sha256: str,
    if_absent: bool,
    max_in_flight: int,
) -> tuple[int, dict[str, Any]]:
    """Upload what `reader` reads as one multipart upload, at most
    `max_in_flight` parts in memory; verify the SHA-256 before completing.

    Returns:
        The object's size and the CompleteMultipartUpload response.

    Raises:
        FerrymanError: `precondition_failed` (checksum mismatch), `conflict` (`if_absent`
            and the key appeared), or the mapped S3 error; the upload is aborted.
    """
    args = {"Bucket": target.bucket, "Key": key, **create_args}
    if target.native_checksums:
        args["ChecksumAlgorithm"] = "SHA256"
    with target.errors.mapped("create multipart upload", key):
        upload_id: str = (await target.client.create_multipart_upload(**args))["UploadId"]
    try:
        return await _upload_parts(target, key, upload_id, reader, sha256, if_absent, max_in_flight)
    except BaseException:
        await _abort(target, key, upload_id)
        raise


async def _upload_parts(
    target: S3Bucket,
    key: str,
    upload_id: str,
    reader: PartReader,
    sha256: str,
    if_absent: bool,
    max_in_flight: int,
) -> tuple[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}

    async def send(number: int, part: bytearray) -> None:
        args: dict[str, Any] = {"PartNumber": number, "UploadId": upload_id}
        if target.native_checksums:
            args["ChecksumSHA256"] = checksum_b64(part)
        with PartBody(part) as body, target.errors.mapped("upload part", key):
            answer = await target.client.upload_part(
                Bucket=target.bucket, Key=key, Body=body, **args
            )
        done[number] = _completed_part(number, answer["ETag"], answer, target)

    hasher, size, number = hashlib.sha256(), 0, 0
    async with InFlight(max_in_flight) as in_flight:
        while part := await reader.read():
            number += 1
            if number > MAX_PARTS:
                raise FerrymanError(
                    ErrorCode.TOO_LARGE,
                    f"{key[:200]!r} needs more than {MAX_PARTS} parts of {reader.part_size} bytes",
                )
            hasher.update(part)
            size += len(part)
            in_flight.start(send(number, part))
            del part  # only the transfer holds it now: a finished one frees it while we read
            await in_flight.wait_for_slot()
    actual = hasher.hexdigest()
    if actual != sha256:
        raise mismatch(key, sha256, actual)
    return size, await _complete(target, key, upload_id, done, if_absent)


async def multipart_copy(
    target: S3Bucket,
    source: str,
    key: str,
    *,
    size: int,
    etag: str | None,
    part_size: int,
    create_args: dict[str, Any],
    if_absent: bool,
    max_in_flight: int,
) -> dict[str, Any]:
    """Copy `source` (of `size` bytes) to `key` server-side in ranged parts, each part
    conditional on the source's `etag` so a source replaced midway fails the copy.

    Returns:
        The CompleteMultipartUpload response.

    Raises:
        FerrymanError: `precondition_failed` (the source changed), `conflict`
            (`if_absent`), or the mapped S3 error; the upload is aborted.
    """
    part_size = max(part_size, -(-size // MAX_PARTS))
    args = {"Bucket": target.bucket, "Key": key, **create_args}
    if target.native_checksums:
        args["ChecksumAlgorithm"] = "SHA256"
    with target.errors.mapped("create multipart upload", key):
        upload_id: str = (await target.client.create_multipart_upload(**args))["UploadId"]
    done: dict[int, dict[str, Any]] = {}

    async def send(number: int, start: int) -> None:
        last = min(start + part_size, size) - 1
        condition = {"CopySourceIfMatch": etag} if etag else {}
        with target.errors.mapped("upload part copy", key):
            answer = await target.client.upload_part_copy(
                Bucket=target.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource={"Bucket": target.bucket, "Key": source},
                CopySourceRange=f"bytes={start}-{last}",
                **condition,
            )
        result = answer["CopyPartResult"]
        done[number] = _completed_part(number, result["ETag"], result, target)

    try:
        async with InFlight(max_in_flight) as in_flight:
            for number, start in enumerate(range(0, size, part_size), start=1):
                in_flight.start(send(number, start))
                await in_flight.wait_for_slot()
        return await _complete(target, key, upload_id, done, if_absent)
    except BaseException:
        await _abort(target, key, upload_id)
        raise


async def copy_within(
    target: S3Bucket,
    source: str,
    key: str,
    *,
    size: int,
    etag: str | None,
    copy_args: dict[str, Any],
    create_args: dict[str, Any],
    if_absent: bool,
    threshold: int,
    part_size: int,
    max_in_flight: int,
) -> dict[str, Any]:
    """Copy `source` to `key` server-side: one CopyObject (with `copy_args`) up to
    `threshold` bytes, else `multipart_copy` (with `create_args`).

    Returns:
        The new object's `ETag`, `VersionId` and `LastModified` (as S3 gave them).

    Raises:
        FerrymanError: the mapped S3 error (status 412: `if_absent` and the key exists).
    """
    if size > threshold:
        return await multipart_copy(
            target,
            source,
            key,
            size=size,
            etag=etag,
            part_size=part_size,
            create_args=create_args,
            if_absent=if_absent,
            max_in_flight=max_in_flight,
        )
    args = dict(copy_args)
    if target.native_checksums:
        args["ChecksumAlgorithm"] = "SHA256"
    if if_absent and target.conditional_writes:
        args["IfNoneMatch"] = "*"
    with target.errors.mapped("copy", key):
        answer = await target.client.copy_object(
            Bucket=target.bucket,
            Key=key,
            CopySource={"Bucket": target.bucket, "Key": source},
            **args,
        )
    return {**answer.get("CopyObjectResult", {}), "VersionId": answer.get("VersionId")}


def _completed_part(
    number: int, etag: str, answer: dict[str, Any], target: S3Bucket
) -> dict[str, Any]:
    part: dict[str, Any] = {"PartNumber": number, "ETag": etag}
    if target.native_checksums and answer.get("ChecksumSHA256"):
        part["ChecksumSHA256"] = answer["ChecksumSHA256"]
    return part


async def _complete(
    target: S3Bucket, key: str, upload_id: str, done: dict[int, dict[str, Any]], if_absent: bool
) -> dict[str, Any]:
    parts = [done[number] for number in sorted(done)]
    args: dict[str, Any] = {"UploadId": upload_id, "MultipartUpload": {"Parts": parts}}
    if if_absent and target.conditional_writes:
        args["IfNoneMatch"] = "*"
    with target.errors.mapped("complete multipart upload", key):
        return await target.client.complete_multipart_upload(Bucket=target.bucket, Key=key, **args)


ABORT_DELAYS = (0.0, 0.2, 0.5, 1.0)
"""Waits before each abort attempt: a part upload still in flight on the server may outlive
one abort (S3 documents that an upload may need aborting more than once)."""


async def _abort(target: S3Bucket, key: str, upload_id: str) -> None:
    """Abort the upload even while being cancelled (S3 then drops the stored parts), again
    until it is gone (bounded)."""
    await asyncio.shield(_abort_until_gone(target, key, upload_id))


async def _abort_until_gone(target: S3Bucket, key: str, upload_id: str) -> None:
    client = target.client
    for delay in ABORT_DELAYS:
        await asyncio.sleep(delay)  # a retry backoff, not synchronization
        with contextlib.suppress(Exception):
            await client.abort_multipart_upload(Bucket=target.bucket, Key=key, UploadId=upload_id)
        try:
            listed = await client.list_multipart_uploads(Bucket=target.bucket, Prefix=key)
        except Exception:  # cannot tell: another attempt costs little
            continue
        if not any(u.get("UploadId") == upload_id for u in listed.get("Uploads", [])):
            return
    logger.warning("multipart upload of %s could not be aborted; a lifecycle rule must", key)
