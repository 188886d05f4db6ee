"""Objects as a tenant sees them: keys in its space, its own metadata (the worker's
bookkeeping, `ferryman-*`, kept out of sight), the checksum as a `Checksum`."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman.contracts.storage import Checksum, ObjectInfo
from storage_worker.backends.port import StoredObject
from storage_worker.checksums import CRC32C_META
from storage_worker.pipelines.derived import lineage_of
from storage_worker.policy import TenantSpace

REQUEST_META = "ferryman-request"
"""Metadata naming the request that wrote an object (redelivery detection)."""
_INTERNAL = "ferryman-"


def request_marker(source: str, event_id: str) -> str:
    """Names the request (`ce_source`, `ce_id`) that wrote an object, kept as
    `REQUEST_META`: a redelivery of the request finds its own write."""
    return hashlib.sha256(f"{source}\0{event_id}".encode()).hexdigest()[:32]


def refuse_reserved(metadata: Mapping[str, str] | None) -> None:
    """Refuse user metadata named like the worker's own (`ferryman-*`, in any case: S3
    lowercases names), which would pass for its bookkeeping (a forged lineage).

    Raises:
        FerrymanError: `invalid_request` naming the first such name.
    """
    for name in metadata or {}:
        if name.lower().startswith(_INTERNAL):
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"metadata names starting with {_INTERNAL} are the worker's own ({name!r})",
                retryable=False,
            )


def object_info(space: TenantSpace, stored: StoredObject) -> ObjectInfo:
    """The tenant's view of a stored object."""
    return ObjectInfo(
        backend=space.backend,
        key=space.own_key(stored.key),
        size=stored.size,
        content_type=stored.content_type,
        checksum=Checksum(algorithm="sha256", value=stored.sha256) if stored.sha256 else None,
        checksums=checksums_of(stored),
        etag=stored.etag,
        version=stored.version,
        last_modified=stored.last_modified,
        metadata={k: v for k, v in stored.metadata.items() if not k.startswith(_INTERNAL)},
        tags=dict(stored.tags),
        lineage=lineage_of(stored.metadata),
    )


def checksums_of(stored: StoredObject) -> list[Checksum]:
    """The object's SHA-256 and CRC32C, those it has (a CRC32C of a foreign writer that is
    not 8 hex digits is left out)."""
    found: list[Checksum] = []
    if stored.sha256:
        found.append(Checksum(algorithm="sha256", value=stored.sha256))
    crc32c = stored.metadata.get(CRC32C_META, "")
    if len(crc32c) == 8 and all(c in "0123456789abcdef" for c in crc32c):
        found.append(Checksum(algorithm="crc32c", value=crc32c))
    return found
