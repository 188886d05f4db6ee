"""Copies and moves between keys and backends, safe to redeliver.

The target of a copy is marked with the request that wrote it (`ferryman-request`, as puts
are): a redelivered copy or move finds its own earlier write and answers with it instead
of copying again over a newer object (or failing `conflict` when it was create-only).
Within one backend the backend copies server-side; across backends the bytes stream
through the worker with progress, spooled only when the source has no stored checksum.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferryman_runtime.replies import ReplyStream
from storage_worker.backends.port import Body, ObjectStore, StoredObject, close_body
from storage_worker.checksums import CRC32C_META
from storage_worker.object_info import REQUEST_META
from storage_worker.progress import reported
from storage_worker.sources import with_checksums
from storage_worker.stores import head_or_none


@dataclass(frozen=True)
class Endpoint:
    """One side of a copy: the backend's name, the store and the full key."""

    backend: str
    store: ObjectStore
    key: str


async def copy_object(
    source: Endpoint,
    target: Endpoint,
    *,
    if_absent: bool,
    marker: str,
    replies: ReplyStream,
) -> tuple[StoredObject, bool]:
    """Copy `source` to `target`; the target's description, and whether this run wrote it
    (False: a redelivery found the copy its first run made).

    Raises:
        FerrymanError: `not_found` (no source), `conflict` (`if_absent`, the target exists
            and another request wrote it), or the backends' errors.
    """
    earlier = await head_or_none(target.store, target.key)
    if earlier is not None and earlier.metadata.get(REQUEST_META) == marker:
        return earlier, False
    if source.backend == target.backend:
        copied = await target.store.copy(source.key, target.key, if_absent=if_absent)
        # Backends copy metadata as it is: the mark is set on the copy afterwards.
        marked = await target.store.update_metadata(
            target.key,
            metadata={**copied.metadata, REQUEST_META: marker},
            tags=None,
            content_type=None,
        )
        return marked, True
    origin, body = await source.store.get(source.key)
    try:
        return await _streamed_copy(origin, body, target, if_absent, marker, replies)
    finally:
        await close_body(body)  # the target may have failed before reading it all


async def _streamed_copy(
    origin: StoredObject,
    body: Body,
    target: Endpoint,
    if_absent: bool,
    marker: str,
    replies: ReplyStream,
) -> tuple[StoredObject, bool]:
    streamed = reported(body, replies, stage="copy", total=origin.size)
    metadata = {**origin.metadata, REQUEST_META: marker}
    if origin.sha256 is not None:
        stored = await target.store.put(
            target.key,
            streamed,
            content_type=origin.content_type,
            metadata=metadata,
            tags=dict(origin.tags),
            sha256=origin.sha256,
            if_absent=if_absent,
        )
        return stored, True
    # An object stored without its checksum (e.g. written by another program): the target
    # needs one before the first byte, so the bytes are spooled while it is computed.
    async with with_checksums(streamed) as (spooled, digests):
        metadata.setdefault(CRC32C_META, digests.crc32c)
        stored = await target.store.put(
            target.key,
            spooled,
            content_type=origin.content_type,
            metadata=metadata,
            tags=dict(origin.tags),
            sha256=digests.sha256,
            if_absent=if_absent,
        )
    return stored, True
