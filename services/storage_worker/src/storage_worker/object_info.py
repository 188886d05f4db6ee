"""Objects as a tenant sees them: keys in its space, its own metadata (the worker's
bookkeeping, `ferryman-*`, kept out of sight), the checksum as a `Checksum`."""

from __future__ import annotations

from ferryman.contracts.storage import Checksum, ObjectInfo
from storage_worker.backends.port import StoredObject
from storage_worker.policy import TenantSpace

REQUEST_META = "ferryman-request"
"""Metadata naming the request that wrote an object (redelivery detection)."""
_INTERNAL = "ferryman-"


def object_info(space: TenantSpace, stored: StoredObject) -> ObjectInfo:
    """The tenant's view of a stored object."""
    return ObjectInfo(
        backend=space.backend,
        key=space.own_key(stored.key),
        size=stored.size,
        content_type=stored.content_type,
        checksum=Checksum(algorithm="sha256", value=stored.sha256) if stored.sha256 else None,
        etag=stored.etag,
        version=stored.version,
        last_modified=stored.last_modified,
        metadata={k: v for k, v in stored.metadata.items() if not k.startswith(_INTERNAL)},
        tags=dict(stored.tags),
    )
