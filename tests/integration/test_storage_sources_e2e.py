"""Puts from a source URL and CRC32C checksums, end to end through the real Kafka on the
local backend: a multi-MiB body streamed from a local HTTP server with progress, sources the
policy refuses, checksum mismatches and oversized sources storing nothing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import google_crc32c
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ferryman.codec import decode_event, header_value
from tests.integration.conftest import read_topic
from tests.integration.storage_harness import StorageHarness, running_storage_worker
from tests.storage.s3_store import (
    MOTO_ACCESS_KEY,
    MOTO_SECRET_KEY,
    admin_client,
    moto_endpoint,
    s3_bucket,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MIB = 1024 * 1024
BIG = b"%PDF-1.4\n" + bytes(range(256)) * (12 * MIB // 256)
SMALL = b"plain text from the source\n" * 100
PNG = b"\x89PNG\r\n\x1a\n" + bytes(4096)


def crc32c(data: bytes) -> str:
    return google_crc32c.Checksum(data).digest().hex()


class Source:
    """A local HTTP server; `/slow.pdf` sends `BIG` a MiB at a time, as a slow source does."""

    def __init__(self) -> None:
        self.requests = 0
        app = web.Application()
        app.router.add_get("/slow.pdf", self.slow)
        app.router.add_get("/small.txt", self.fixed(SMALL, "text/plain"))
        app.router.add_get("/image.png", self.fixed(PNG, "image/png"))
        self.server = TestServer(app, host="127.0.0.1")

    def fixed(self, body: bytes, content_type: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            self.requests += 1
            return web.Response(body=body, content_type=content_type)

        return handle

    async def slow(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        response = web.StreamResponse(headers={"Content-Length": str(len(BIG))})
        await response.prepare(request)
        for start in range(0, len(BIG), MIB):
            await response.write(BIG[start : start + MIB])
            await asyncio.sleep(0.1)  # the source's pace (progress is timed), not a wait
        await response.write_eof()
        return response

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}?token=s3cr3t"


@pytest.fixture
async def source() -> AsyncIterator[Source]:
    served = Source()
    await served.server.start_server()
    try:
        yield served
    finally:
        await served.server.close()


def policy(root: Path, **acme: Any) -> dict[str, Any]:
    return {
        "backends": {"local": {"type": "local", "root": str(root)}},
        "tenants": {
            "acme": {
                "spaces": {"local": "acme/"},
                "sources": {"schemes": ["http"], "hosts": ["127.0.0.1"], "allow_private": True},
                **acme,
            },
            "*": {"spaces": {"local": "{tenant}/"}},
        },
    }


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and ".ferryman-tmp" not in p.parts]


async def all_replies(harness: StorageHarness, request_id: str) -> list[Any]:
    """Every reply to `request_id` up to its terminal one, in order."""

    def mine(record: Any) -> bool:
        return header_value(record.headers, "ce_correlationid") == request_id

    def terminal(record: Any) -> bool:
        kind = header_value(record.headers, "ce_type") or ""
        return mine(record) and kind.endswith((".completed", ".failed"))

    records = await read_topic(
        harness.bootstrap,
        harness.settings.default_reply_topic,
        until=lambda records: any(terminal(r) for r in records),
        timeout=60,
    )
    return [decode_event(list(r.headers), r.value) for r in records if mine(r)]


async def test_a_put_streams_a_source_with_progress(
    kafka_bootstrap: str, unique: str, tmp_path: Path, source: Source
) -> None:
    root = tmp_path / "disk"
    async with running_storage_worker(
        kafka_bootstrap, unique, tmp_path, policy=policy(root)
    ) as harness:
        request_id = await harness.send(
            "put",
            {
                "key": "big.pdf",
                "source": {"url": source.url("/slow.pdf"), "headers": {"X-Token": "t"}},
                "metadata": {"origin": "partner"},
            },
        )
        replies = await all_replies(harness, request_id)
        head = await harness.call("head", {"key": "big.pdf"})

    done = replies[-1]
    assert done.type == "ferryman.storage.put.completed", done.data
    stored = done.data["object"]
    assert stored["size"] == len(BIG)
    assert stored["content_type"] == "application/pdf"
    assert stored["metadata"] == {"origin": "partner"}
    assert stored["checksums"] == [
        {"algorithm": "sha256", "value": hashlib.sha256(BIG).hexdigest()},
        {"algorithm": "crc32c", "value": crc32c(BIG)},
    ]
    assert head.data["object"]["checksums"] == stored["checksums"]
    assert (root / "acme" / "big.pdf").read_bytes() == BIG
    progress = [r.data for r in replies if r.type == "ferryman.storage.progress"]
    assert len(progress) >= 2
    assert {p["stage"] for p in progress} == {"fetch"}
    assert [p["sequence"] for p in progress] == list(range(len(progress)))
    assert progress[-1]["bytes_done"] == progress[-1]["bytes_total"] == len(BIG)


async def test_sources_the_policy_does_not_allow_are_refused(
    kafka_bootstrap: str, unique: str, tmp_path: Path, source: Source
) -> None:
    root = tmp_path / "disk"
    rules = policy(root, content_types=["application/pdf", "text/*"])
    async with running_storage_worker(kafka_bootstrap, unique, tmp_path, policy=rules) as harness:
        no_sources = await harness.call(
            "put", {"key": "a.txt", "source": {"url": source.url("/small.txt")}}, tenant="globex"
        )
        metadata = await harness.call(
            "put", {"key": "m.txt", "source": {"url": "http://169.254.169.254/latest/meta-data/"}}
        )
        image = await harness.call(
            "put", {"key": "i.png", "source": {"url": source.url("/image.png")}}
        )

    assert no_sources.data["error"]["code"] == "permission_denied"
    assert "sources" in no_sources.data["error"]["message"]
    assert "s3cr3t" not in no_sources.data["error"]["message"]
    assert metadata.data["error"]["code"] == "permission_denied"
    assert image.data["error"]["code"] == "permission_denied"
    assert "image/png" in image.data["error"]["message"]
    assert source.requests == 1  # the image only: the refused sources were never asked
    assert stored_files(root) == []


@pytest.mark.parametrize(
    "checksums",
    [
        {"sha256": "0" * 64},
        {"crc32c": "00000000"},
        {"sha256": hashlib.sha256(BIG).hexdigest(), "crc32c": "00000000"},  # streamed
    ],
)
async def test_a_source_checksum_mismatch_stores_nothing(
    kafka_bootstrap: str, unique: str, tmp_path: Path, source: Source, checksums: dict[str, str]
) -> None:
    root = tmp_path / "disk"
    async with running_storage_worker(
        kafka_bootstrap, unique, tmp_path, policy=policy(root)
    ) as harness:
        refused = await harness.call(
            "put", {"key": "big.pdf", "source": {"url": source.url("/slow.pdf")}, **checksums}
        )
        missing = await harness.call("head", {"key": "big.pdf"})

    assert refused.data["error"]["code"] == "precondition_failed"
    assert missing.data["error"]["code"] == "not_found"
    assert stored_files(root) == []


async def test_a_source_over_the_size_limit_stores_nothing(
    kafka_bootstrap: str, unique: str, tmp_path: Path, source: Source
) -> None:
    root = tmp_path / "disk"
    rules = policy(root, max_object_bytes=MIB)
    async with running_storage_worker(kafka_bootstrap, unique, tmp_path, policy=rules) as harness:
        refused = await harness.call(
            "put", {"key": "big.pdf", "source": {"url": source.url("/slow.pdf")}}
        )
        missing = await harness.call("head", {"key": "big.pdf"})

    assert refused.data["error"]["code"] == "too_large"
    assert "s3cr3t" not in refused.data["error"]["message"]
    assert missing.data["error"]["code"] == "not_found"
    assert stored_files(root) == []


async def test_crc32c_round_trip(
    kafka_bootstrap: str, unique: str, tmp_path: Path, source: Source
) -> None:
    root = tmp_path / "disk"
    async with running_storage_worker(
        kafka_bootstrap, unique, tmp_path, policy=policy(root)
    ) as harness:
        put = await harness.put("notes.txt", SMALL, crc32c=crc32c(SMALL))
        wrong = await harness.put("wrong.txt", SMALL, crc32c="00000000")
        fetched = await harness.call(
            "put",
            {
                "key": "fetched.txt",
                "source": {"url": source.url("/small.txt")},
                "sha256": hashlib.sha256(SMALL).hexdigest(),
                "crc32c": crc32c(SMALL),
            },
        )
        head = await harness.call("head", {"key": "notes.txt"})
        got = await harness.call("get", {"key": "fetched.txt"})
        copied = await harness.call("copy", {"source": {"key": "notes.txt"}, "key": "copy.txt"})

    expected = {"algorithm": "crc32c", "value": crc32c(SMALL)}
    assert expected in put.data["object"]["checksums"]
    assert put.data["object"]["checksum"]["algorithm"] == "sha256"
    assert wrong.data["error"]["code"] == "precondition_failed"
    assert "CRC32C" in wrong.data["error"]["message"]
    assert expected in fetched.data["object"]["checksums"]
    assert expected in head.data["object"]["checksums"]
    assert expected in got.data["object"]["checksums"]
    assert base64.b64decode(got.data["content_base64"]) == SMALL
    assert expected in copied.data["object"]["checksums"]
    assert "ferryman-crc32c" not in head.data["object"]["metadata"]


async def test_a_source_put_on_s3_carries_both_checksums_or_leaves_nothing(
    kafka_bootstrap: str, unique: str, tmp_path: Path, source: Source
) -> None:
    async with s3_bucket() as bucket:
        rules = {
            "backends": {
                "s3": {
                    "type": "s3",
                    "bucket": bucket,
                    "endpoint_url": moto_endpoint(),
                    "access_key_id": "env:TEST_S3_KEY",
                    "secret_access_key": "env:TEST_S3_SECRET",
                }
            },
            "tenants": {
                "acme": {
                    "spaces": {"s3": "acme/"},
                    "sources": {"schemes": ["http"], "hosts": ["127.0.0.1"], "allow_private": True},
                }
            },
        }
        environ = {"TEST_S3_KEY": MOTO_ACCESS_KEY, "TEST_S3_SECRET": MOTO_SECRET_KEY}
        async with running_storage_worker(
            kafka_bootstrap, unique, tmp_path, policy=rules, environ=environ
        ) as harness:
            put = await harness.call(
                "put", {"key": "big.pdf", "source": {"url": source.url("/slow.pdf")}}
            )
            wrong = await harness.call(
                "put",
                {
                    "key": "wrong.pdf",
                    "source": {"url": source.url("/slow.pdf")},
                    "sha256": hashlib.sha256(BIG).hexdigest(),
                    "crc32c": "00000000",
                },
            )
            head = await harness.call("head", {"key": "big.pdf"})
        async with admin_client() as s3:
            listed = await s3.list_objects_v2(Bucket=bucket)
            uploads = await s3.list_multipart_uploads(Bucket=bucket)
            raw = await s3.head_object(Bucket=bucket, Key="acme/big.pdf")

    assert put.type == "ferryman.storage.put.completed", put.data
    assert head.data["object"]["checksums"] == [
        {"algorithm": "sha256", "value": hashlib.sha256(BIG).hexdigest()},
        {"algorithm": "crc32c", "value": crc32c(BIG)},
    ]
    assert raw["Metadata"]["ferryman-crc32c"] == crc32c(BIG)
    assert wrong.data["error"]["code"] == "precondition_failed"
    assert [o["Key"] for o in listed["Contents"]] == ["acme/big.pdf"]
    assert uploads.get("Uploads", []) == []
