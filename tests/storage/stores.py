"""The backends the storage contract suite runs on: one factory per backend, each an async
context manager yielding a fresh, empty `ObjectStore` (its own bucket, container or root)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from storage_worker.backends.port import ObjectStore

StoreFactory = Callable[[Path], AbstractAsyncContextManager[ObjectStore]]
"""Given a scratch folder, opens a fresh store (and removes it afterwards)."""


def factories() -> dict[str, StoreFactory]:
    """Every backend's factory, by backend name (imported here so one missing SDK fails
    only its own backend's tests)."""
    found: dict[str, StoreFactory] = {}
    from tests.storage.local_store import local_store

    found["local"] = local_store
    try:
        from tests.storage.s3_store import s3_store
    except ImportError:  # not written yet
        pass
    else:
        found["s3"] = s3_store
    try:
        from tests.storage.gcs_store import gcs_store
    except ImportError:  # the GCS SDKs are not installed
        pass
    else:
        found["gcs"] = gcs_store
    try:
        from tests.storage.azure_store import azure_store
    except ImportError:  # the Azure SDK is not installed
        pass
    else:
        found["azure"] = azure_store
    return found


async def drain(body: AsyncIterator[bytes]) -> bytes:
    """All of a body's bytes."""
    return b"".join([chunk async for chunk in body])
