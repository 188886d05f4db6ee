"""S3 stores for tests, on moto's S3 server: one `ThreadedMotoServer` per test session
(started on first use, stopped at exit), a fresh bucket per store, emptied and deleted
afterwards."""

from __future__ import annotations

import atexit
import logging
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from moto.server import ThreadedMotoServer

from storage_worker.backends.s3 import S3Settings, S3Store

MOTO_ACCESS_KEY = "test-access-key"
MOTO_SECRET_KEY = "test-secret-key"
MOTO_REGION = "us-east-1"

_server: ThreadedMotoServer | None = None
_endpoint: str | None = None
_lock = threading.Lock()


def moto_endpoint() -> str:
    """The session's moto server URL (started on first call, stopped at interpreter exit)."""
    global _server, _endpoint
    with _lock:
        if _endpoint is None:
            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            _server, _endpoint = server, f"http://{host}:{port}"
            atexit.register(server.stop)
        return _endpoint


@contextmanager
def moto_process(startup_timeout: float = 30.0) -> Iterator[str]:
    """A moto server in its own process (for measuring this process's memory without the
    server's), its URL; stopped afterwards."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto did not start on port {port}") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def moto_settings(bucket: str, endpoint: str | None = None, **overrides: Any) -> S3Settings:
    """Settings for `bucket` on moto: path-style, no retries, short timeouts."""
    settings = S3Settings(
        bucket=bucket,
        region=MOTO_REGION,
        endpoint_url=endpoint or moto_endpoint(),
        access_key_id=MOTO_ACCESS_KEY,
        secret_access_key=MOTO_SECRET_KEY,
        addressing_style="path",
        connect_timeout=2.0,
        read_timeout=30.0,
        max_attempts=1,
    )
    return replace(settings, **overrides)


@asynccontextmanager
async def admin_client(endpoint: str | None = None) -> AsyncIterator[Any]:
    """A plain aiobotocore S3 client on moto (to create, inspect and remove buckets)."""
    async with get_session().create_client(
        "s3",
        endpoint_url=endpoint or moto_endpoint(),
        region_name=MOTO_REGION,
        aws_access_key_id=MOTO_ACCESS_KEY,
        aws_secret_access_key=MOTO_SECRET_KEY,
        config=AioConfig(retries={"mode": "standard", "total_max_attempts": 1}),
    ) as client:
        yield client


async def empty_and_delete(client: Any, bucket: str) -> None:
    """Abort the bucket's uploads, delete its objects (every version), then the bucket."""
    uploads = await client.list_multipart_uploads(Bucket=bucket)
    for upload in uploads.get("Uploads", []):
        await client.abort_multipart_upload(
            Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
        )
    paginator = client.get_paginator("list_object_versions")
    async for page in paginator.paginate(Bucket=bucket):
        entries = page.get("Versions", []) + page.get("DeleteMarkers", [])
        if entries:
            await client.delete_objects(
                Bucket=bucket,
                Delete={
                    "Objects": [{"Key": e["Key"], "VersionId": e["VersionId"]} for e in entries]
                },
            )
    await client.delete_bucket(Bucket=bucket)


@asynccontextmanager
async def s3_bucket(endpoint: str | None = None) -> AsyncIterator[str]:
    """A fresh, uniquely named bucket on moto, removed with its content afterwards."""
    bucket = f"ferryman-test-{uuid.uuid4().hex[:20]}"
    async with admin_client(endpoint) as client:
        await client.create_bucket(Bucket=bucket)
        try:
            yield bucket
        finally:
            await empty_and_delete(client, bucket)


@asynccontextmanager
async def s3_store(tmp_path: Path, **overrides: Any) -> AsyncIterator[S3Store]:
    """An `S3Store` on a fresh moto bucket (`overrides`: `S3Settings` fields)."""
    del tmp_path  # the bucket is the scratch space
    async with s3_bucket() as bucket:
        store = await S3Store.open("s3", moto_settings(bucket, **overrides))
        try:
            yield store
        finally:
            await store.close()
