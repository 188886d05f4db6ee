"""GCS stores for tests, on gcp-storage-emulator (with the preconditions and paging it
lacks added: see `tests.storage.gcs_emulator`): one emulator process per test session
(started on first use, stopped at exit), a fresh bucket per store, emptied and deleted
afterwards, and a throwaway service account (a locally generated RSA key) to sign URLs."""

from __future__ import annotations

import atexit
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from storage_worker.backends.gcs import GcsSettings, GcsStore

GCS_PROJECT = "test-project"
_EMULATOR = Path(__file__).with_name("gcs_emulator.py")
_endpoint: str | None = None
_lock = threading.Lock()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def gcs_endpoint(startup_timeout: float = 30.0) -> str:
    """The session's emulator URL (started on first call, stopped at interpreter exit).

    Raises:
        RuntimeError: the emulator did not answer within `startup_timeout` seconds.
    """
    global _endpoint
    with _lock:
        if _endpoint is None:
            port = _free_port()
            log = tempfile.TemporaryFile()  # noqa: SIM115 (the emulator's stderr, kept open)
            process = subprocess.Popen(
                [sys.executable, str(_EMULATOR), str(port)],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
            endpoint = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + startup_timeout
            while not _answers(f"{endpoint}/storage/v1/b?project={GCS_PROJECT}"):
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    log.seek(0)
                    tail = log.read()[-2000:].decode(errors="replace")
                    raise RuntimeError(f"gcp-storage-emulator did not start: {tail}")
                time.sleep(0.05)  # polling a process we do not control
            atexit.register(_stop, process)
            _endpoint = endpoint
        return _endpoint


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@cache
def service_account() -> dict[str, Any]:
    """A throwaway service-account key (a fresh RSA key, never valid anywhere)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": GCS_PROJECT,
        "private_key_id": uuid.uuid4().hex,
        "private_key": pem,
        "client_email": f"ferryman-test@{GCS_PROJECT}.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


def gcs_settings(bucket: str, endpoint: str | None = None, **overrides: Any) -> GcsSettings:
    """Settings for `bucket` on the emulator, with the throwaway service account."""
    settings = GcsSettings(
        bucket=bucket,
        endpoint_url=endpoint or gcs_endpoint(),
        service_account=service_account(),
        connect_timeout=2.0,
        request_timeout=30.0,
        read_timeout=30.0,
    )
    return replace(settings, **overrides)


@asynccontextmanager
async def gcs_bucket(endpoint: str | None = None) -> AsyncIterator[str]:
    """A fresh, uniquely named bucket on the emulator, removed with its content afterwards."""
    root = f"{endpoint or gcs_endpoint()}/storage/v1/b"
    bucket = f"ferryman-test-{uuid.uuid4().hex[:20]}"
    async with aiohttp.ClientSession(raise_for_status=True) as http:
        async with http.post(root, params={"project": GCS_PROJECT}, json={"name": bucket}):
            pass
        try:
            yield bucket
        finally:
            async with http.get(f"{root}/{bucket}/o") as answer:
                listed: dict[str, Any] = json.loads(await answer.text())
            for item in listed.get("items") or []:
                async with http.delete(f"{root}/{bucket}/o/{quote(item['name'], safe='')}"):
                    pass
            async with http.delete(f"{root}/{bucket}"):
                pass


@asynccontextmanager
async def gcs_store(tmp_path: Path, **overrides: Any) -> AsyncIterator[GcsStore]:
    """A `GcsStore` on a fresh emulator bucket (`overrides`: `GcsSettings` fields)."""
    del tmp_path  # the bucket is the scratch space
    async with gcs_bucket() as bucket:
        store = await GcsStore.open("gcs", gcs_settings(bucket, **overrides))
        try:
            yield store
        finally:
            await store.close()
