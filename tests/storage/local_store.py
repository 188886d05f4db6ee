"""The local backend for the storage contract suite: a fresh root folder per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from storage_worker.backends.local import LocalStore
from storage_worker.backends.port import ObjectStore


@asynccontextmanager
async def local_store(tmp_path: Path) -> AsyncIterator[ObjectStore]:
    """A `LocalStore` named `local` over `tmp_path/local-root` (closed afterwards; pytest
    removes the folder)."""
    store = LocalStore("local", tmp_path / "local-root")
    try:
        yield store
    finally:
        await store.close()
