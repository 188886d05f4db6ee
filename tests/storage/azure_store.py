"""Azure stores for tests, on Azurite (the Azure Storage emulator, from npm): one Azurite
process per test session (started on first use, stopped at exit), a fresh container per
store, deleted with its blobs afterwards."""

from __future__ import annotations

import atexit
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from azure.storage.blob.aio import BlobServiceClient

from storage_worker.backends.azure import AzureSettings, AzureStore

ROOT = Path(__file__).resolve().parents[2]
AZURITE_BIN = ROOT / "tools" / "node" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
"""Azurite's well-known development key (public, the same everywhere)."""
AZURITE_API_VERSION = "2025-11-05"
"""What Azurite 3.35 speaks; the SDK's newest (2026-10-06) it refuses."""
STARTUP_TIMEOUT = 60.0

_process: subprocess.Popen[bytes] | None = None
_endpoint: str | None = None
_lock = threading.Lock()


class AzuriteMissing(RuntimeError):
    """Azurite is not installed where the tests look for it."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def azurite_endpoint() -> str:
    """The session's Azurite blob endpoint (`http://127.0.0.1:<port>/devstoreaccount1`),
    started on first call and stopped at interpreter exit.

    Raises:
        AzuriteMissing: the binary is not installed (run tools/setup_system.sh).
        RuntimeError: Azurite did not accept connections within `STARTUP_TIMEOUT` seconds.
    """
    global _process, _endpoint
    with _lock:
        if _endpoint is None:
            if not AZURITE_BIN.exists():
                raise AzuriteMissing(
                    f"Azurite is not installed at {AZURITE_BIN}: run tools/setup_system.sh"
                    " (it runs `npm ci` in tools/node; needs Node.js 20+ with npm)"
                )
            port = _free_port()
            # what it says is shown if it fails to start (a pipe nobody reads could fill up)
            with tempfile.TemporaryFile() as log:
                process = _start(port, log)
                _wait_accepting(process, port, log)
            atexit.register(_stop, process)
            _process, _endpoint = process, f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
        return _endpoint


def _start(port: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
    command = [
        str(AZURITE_BIN),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--inMemoryPersistence",
        "--silent",
        "--disableTelemetry",
        # SAS URLs carry the SDK's newest version (`sv`), which Azurite would refuse; the
        # clients pin `AZURITE_API_VERSION` anyway
        "--skipApiVersionCheck",
    ]
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
        cwd=tempfile.gettempdir(),  # whatever it writes stays out of the repository
    )


def _wait_accepting(process: subprocess.Popen[bytes], port: int, log: IO[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(
                    f"Azurite exited at startup with code {process.returncode}: {_said(log)}"
                ) from None
            if time.monotonic() > deadline:
                _stop(process)
                raise RuntimeError(f"Azurite did not listen on port {port}") from None
            time.sleep(0.05)  # polling a port, bounded by the deadline


def _said(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read()[-1000:].decode(errors="replace")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def connection_string(endpoint: str | None = None, key: str = AZURITE_KEY) -> str:
    """A connection string for Azurite (`key`: another to be refused)."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
        f"BlobEndpoint={endpoint or azurite_endpoint()};"
    )


def azurite_settings(container: str, **overrides: Any) -> AzureSettings:
    """Settings for `container` on Azurite: the pinned API version, no retries, short
    timeouts."""
    settings = AzureSettings(
        container=container,
        connection_string=connection_string(),
        api_version=AZURITE_API_VERSION,
        connect_timeout=2.0,
        read_timeout=30.0,
        max_attempts=1,
    )
    return replace(settings, **overrides)


@asynccontextmanager
async def admin_client() -> AsyncIterator[BlobServiceClient]:
    """A plain SDK client on Azurite (to create, inspect and remove containers)."""
    async with BlobServiceClient.from_connection_string(
        connection_string(), api_version=AZURITE_API_VERSION, retry_total=0
    ) as client:
        yield client


@asynccontextmanager
async def azure_container() -> AsyncIterator[str]:
    """A fresh, uniquely named container on Azurite, deleted with its blobs afterwards."""
    container = f"ferryman-test-{uuid.uuid4().hex[:20]}"
    async with admin_client() as client:
        await client.create_container(container)
        try:
            yield container
        finally:
            await client.delete_container(container)


@asynccontextmanager
async def azure_store(tmp_path: Path, **overrides: Any) -> AsyncIterator[AzureStore]:
    """An `AzureStore` on a fresh Azurite container (`overrides`: `AzureSettings` fields)."""
    del tmp_path  # the container is the scratch space
    async with azure_container() as container:
        store = await AzureStore.open("azure", azurite_settings(container, **overrides))
        try:
            yield store
        finally:
            await store.close()
