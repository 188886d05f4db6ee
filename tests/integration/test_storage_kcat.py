"""The storage_worker driven by `kcat`, the command-line Kafka client: a producer in any
language needs nothing but CloudEvents headers and JSON (docs/contract.md)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.storage_harness import StorageHarness, running_storage_worker

KCAT = shutil.which("kcat")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(KCAT is None, reason="kcat is not installed (make setup installs it)"),
]


@pytest.fixture
async def harness(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> AsyncIterator[StorageHarness]:
    async with running_storage_worker(kafka_bootstrap, unique, tmp_path) as running:
        yield running


async def kcat(*args: str, stdin: bytes = b"", timeout: float = 60.0) -> bytes:
    """Run kcat; its standard output.

    Raises:
        AssertionError: it failed, or did not finish within `timeout` seconds.
    """
    assert KCAT is not None
    process = await asyncio.create_subprocess_exec(
        KCAT,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"kcat {' '.join(args)} did not finish in {timeout}s") from None
    assert process.returncode == 0, err.decode()
    return out


async def produce(harness: StorageHarness, request_id: str, kind: str, data: Any) -> None:
    """Publish a request as a shell script would: binary-mode CloudEvents headers."""
    headers = {
        "ce_specversion": "1.0",
        "ce_id": request_id,
        "ce_source": "/kcat",
        "ce_type": f"ferryman.storage.{kind}.requested",
        "ce_tenant": "acme",
        "content-type": "application/json",
    }
    flags = [part for name, value in headers.items() for part in ("-H", f"{name}={value}")]
    await kcat(
        "-P",
        "-b",
        harness.bootstrap,
        "-t",
        harness.settings.request_topic,
        "-k",
        request_id,
        *flags,
        stdin=json.dumps(data).encode(),
    )


async def consume(harness: StorageHarness, count: int) -> list[dict[str, Any]]:
    """The first `count` replies, read with kcat (it waits for them), as kcat's JSON
    envelopes with the headers as a dict."""
    out = await kcat(
        "-C",
        "-b",
        harness.bootstrap,
        "-t",
        harness.settings.default_reply_topic,
        "-o",
        "beginning",
        "-c",
        str(count),
        "-J",
    )
    records = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    for record in records:
        pairs = record.get("headers") or []
        record["headers"] = dict(zip(pairs[::2], pairs[1::2], strict=True))
    return records


async def test_a_put_and_a_get_sent_and_read_with_kcat(harness: StorageHarness) -> None:
    content = b"# Minutes\n\nStored from a shell script.\n"
    await produce(
        harness,
        "kcat-put-1",
        "put",
        {
            "key": "notes/minutes.md",
            "content_base64": base64.b64encode(content).decode(),
            "content_type": "text/markdown",
        },
    )
    [put] = await consume(harness, 1)

    assert put["headers"]["ce_type"] == "ferryman.storage.put.completed"
    assert put["headers"]["ce_correlationid"] == "kcat-put-1"
    stored = json.loads(put["payload"])["object"]
    assert (stored["key"], stored["size"]) == ("notes/minutes.md", len(content))
    assert stored["checksum"]["value"] == hashlib.sha256(content).hexdigest()

    await produce(harness, "kcat-get-1", "get", {"key": "notes/minutes.md"})
    replies = await consume(harness, 2)  # the put's reply and the get's, in any order
    [got] = [r for r in replies if r["headers"]["ce_correlationid"] == "kcat-get-1"]

    assert got["headers"]["ce_type"] == "ferryman.storage.get.completed"
    assert got["headers"]["ce_correlationid"] == "kcat-get-1"
    assert base64.b64decode(json.loads(got["payload"])["content_base64"]) == content


async def test_a_kcat_request_for_a_missing_object_fails_not_found(
    harness: StorageHarness,
) -> None:
    await produce(harness, "kcat-head-1", "head", {"key": "nothing/here.txt"})
    [failed] = await consume(harness, 1)

    assert failed["headers"]["ce_type"] == "ferryman.storage.failed"
    error = json.loads(failed["payload"])["error"]
    assert (error["code"], error["retryable"]) == ("not_found", False)
