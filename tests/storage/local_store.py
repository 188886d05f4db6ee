"""The local backend for the storage contract suite: a fresh root folder per test, its
signed URLs served by the worker's `/objects` route on a real HTTP server of its own."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.local import LocalStore
from storage_worker.backends.port import ObjectStore
from storage_worker.events import ObjectEvents
from storage_worker.local_urls import LocalObjectUrls
from storage_worker.policy import default_policy
from storage_worker.signed_urls import UrlSigner
from tests.storage.asgi_server import base_url, listening_socket, serving


@asynccontextmanager
async def local_store(tmp_path: Path) -> AsyncIterator[ObjectStore]:
    """A `LocalStore` named `local` over `tmp_path/local-root` (closed afterwards; pytest
    removes the folder), whose URLs reach it."""
    root = tmp_path / "local-root"
    sock = listening_socket()
    signer = UrlSigner(secrets.token_bytes(32), base_url(sock))
    store = LocalStore("local", root, signer=signer)

    async def by_name(name: str) -> ObjectStore:
        if name != store.name:
            raise FerrymanError(ErrorCode.UNAVAILABLE, f"backend {name!r} is not configured")
        return store

    urls = LocalObjectUrls(
        signer,
        by_name,
        policy=lambda: default_policy(root),
        events=ObjectEvents(lambda: None, "storage.events", source="/contract-suite"),
    )
    try:
        async with serving(urls, sock):
            yield store
    finally:
        await store.close()
