"""Azure Blob transfers: a streamed put (one Put Blob, or blocks staged with a bounded number
in memory and committed as one block list) and a server-side copy (waited for when Azure
reports it pending).

Nothing is visible before the commit: a failed or cancelled put commits nothing, and the
blocks it staged stay uncommitted, which Azure never shows (not in a read, a head or a
listing) and discards on the key's next commit, or after a week.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

from azure.core import MatchConditions
from azure.storage.blob import BlobBlock, ContentSettings
from azure.storage.blob.aio import BlobClient

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.azure_errors import AzureErrorMapper
from storage_worker.backends.azure_settings import MAX_BLOCKS
from storage_worker.backends.s3_parts import InFlight, PartBody, PartReader

_COPY_POLL_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Waits between polls of a pending copy (the last one repeats)."""


@dataclass(frozen=True)
class NewBlob:
    """What a put writes besides the bytes."""

    metadata: dict[str, str]
    """As sent to Azure (encoded, the SHA-256 included)."""
    content_type: str | None
    tags: dict[str, str]
    if_absent: bool

    def options(self) -> dict[str, Any]:
        """The SDK arguments that create the blob with this description."""
        args: dict[str, Any] = {"metadata": self.metadata}
        if self.content_type:
            args["content_settings"] = ContentSettings(content_type=self.content_type)
        if self.tags:
            args["tags"] = self.tags
        if self.if_absent:
            args["match_condition"] = MatchConditions.IfMissing
        return args


def mismatch(key: str, expected: str, actual: str) -> FerrymanError:
    """The error for bytes whose SHA-256 is not the one announced (nothing was stored)."""
    return FerrymanError(
        ErrorCode.PRECONDITION_FAILED,
        f"the bytes for {key[:200]!r} have SHA-256 {actual}, not the {expected} announced;"
        " nothing was stored",
    )


async def whole_put(
    blob: BlobClient,
    errors: AzureErrorMapper,
    data: bytearray,
    new: NewBlob,
    sha256: str,
) -> dict[str, Any]:
    """Store `data` with one Put Blob once its SHA-256 is checked.

    Raises:
        FerrymanError: `precondition_failed` (checksum mismatch), or the mapped Azure error
            (`conflict` when `if_absent` and the blob exists).
    """
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise mismatch(blob.blob_name, sha256, actual)
    payload = bytes(data)  # the SDK streams bytes as they are; a bytearray it iterates
    data.clear()
    options = new.options()
    options.pop("match_condition", None)  # `overwrite=False` is Put Blob's If-None-Match: *
    with errors.mapped("put", blob.blob_name):
        return await blob.upload_blob(
            payload, length=len(payload), overwrite=not new.if_absent, **options
        )


async def block_put(
    blob: BlobClient,
    errors: AzureErrorMapper,
    reader: PartReader,
    new: NewBlob,
    sha256: str,
    max_in_flight: int,
) -> tuple[int, dict[str, Any]]:
    """Stage what `reader` reads as blocks, at most `max_in_flight` in memory, and commit
    them once the SHA-256 is checked (a failure or cancellation commits nothing).

    Returns:
        The blob's size and the Put Block List answer.

    Raises:
        FerrymanError: `precondition_failed` (checksum mismatch), `too_large` (past
            50,000 blocks), `conflict` (`if_absent` and the blob appeared), or the mapped
            Azure error.
    """
    key = blob.blob_name
    upload = uuid.uuid4().hex  # block IDs of one put: another put's blocks are not ours
    block_ids: list[str] = []

    async def stage(block_id: str, block: bytearray) -> None:
        # as a stream: given bytes, the HTTP stack copies them about twice over
        with PartBody(block) as stream, errors.mapped("stage block", key):
            await blob.stage_block(block_id, stream, length=len(block))

    hasher, size = hashlib.sha256(), 0
    async with InFlight(max_in_flight) as in_flight:
        while block := await reader.read():
            if len(block_ids) == MAX_BLOCKS:
                raise FerrymanError(
                    ErrorCode.TOO_LARGE,
                    f"{key[:200]!r} needs more than {MAX_BLOCKS} blocks of"
                    f" {reader.part_size} bytes",
                )
            block_ids.append(f"{upload}-{len(block_ids):06d}")
            hasher.update(block)
            size += len(block)
            in_flight.start(stage(block_ids[-1], block))
            del block  # only the transfer holds it now: a finished one frees it while we read
            await in_flight.wait_for_slot()
    actual = hasher.hexdigest()
    if actual != sha256:
        raise mismatch(key, sha256, actual)
    with errors.mapped("commit block list", key):
        answer = await blob.commit_block_list(
            [BlobBlock(block_id) for block_id in block_ids], **new.options()
        )
    return size, answer


async def server_copy(
    source: BlobClient,
    target: BlobClient,
    errors: AzureErrorMapper,
    *,
    source_etag: str,
    tags: dict[str, str],
    if_absent: bool,
    timeout: float,
) -> None:
    """Copy `source` (as of `source_etag`) onto `target` server-side; the metadata and
    content type go with the bytes, `tags` are set on the copy.

    Raises:
        FerrymanError: `precondition_failed` (the source changed), `conflict` (`if_absent`
            and the target exists), `unavailable` (Azure failed or aborted the copy, or it
            was still pending after `timeout` seconds), or the mapped Azure error.
    """
    key = target.blob_name
    options: dict[str, Any] = {
        "source_etag": source_etag,
        "source_match_condition": MatchConditions.IfNotModified,
    }
    if tags:
        options["tags"] = tags
    if if_absent:
        options["match_condition"] = MatchConditions.IfMissing
    with errors.mapped("copy", key):
        answer = await target.start_copy_from_url(source.url, **options)
    if answer.get("copy_status") == "pending":
        await _copied(target, errors, str(answer.get("copy_id")), timeout)


async def _copied(
    target: BlobClient, errors: AzureErrorMapper, copy_id: str, timeout: float
) -> None:
    key = target.blob_name
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        await asyncio.sleep(_COPY_POLL_DELAYS[min(attempt, len(_COPY_POLL_DELAYS) - 1)])
        attempt += 1
        with errors.mapped("copy status", key):
            copy = (await target.get_blob_properties()).copy
        if copy.id != copy_id or copy.status == "success":
            return  # a later write replaced the copy: that write is the object now
        if copy.status != "pending" or time.monotonic() > deadline:
            break
    with errors.mapped("abort copy", key):
        if copy.status == "pending":
            await target.abort_copy(copy_id)
        await target.delete_blob()
    raise FerrymanError(
        ErrorCode.UNAVAILABLE,
        f"Azure copy to {key[:200]!r} ended {copy.status or 'unknown'}; the target was removed",
        upstream=errors.upstream,
    )
