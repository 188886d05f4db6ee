"""The storage_worker end to end through the real Kafka, on the local backend: every
operation, tenant isolation, hostile keys, content checks, redelivery and object events."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from ferryman.contracts.storage import ObjectRef, parse_dataref
from tests.integration.storage_harness import StorageHarness, running_storage_worker
from tests.storage.s3_store import (
    MOTO_ACCESS_KEY,
    MOTO_SECRET_KEY,
    admin_client,
    moto_endpoint,
    s3_bucket,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def files_under(folder: Path) -> list[Path]:
    """Every file below `folder` (what the worker wrote)."""
    return [path for path in folder.rglob("*") if path.is_file()]


@pytest.fixture
async def harness(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> AsyncIterator[StorageHarness]:
    async with running_storage_worker(kafka_bootstrap, unique, tmp_path) as running:
        yield running


async def test_put_head_get_list_delete(harness: StorageHarness, tmp_path: Path) -> None:
    put = await harness.put(
        "reports/q3.pdf", PDF, metadata={"owner": "ana"}, tags={"kind": "report"}
    )

    assert put.type == "ferryman.storage.put.completed", put.data
    stored = put.data["object"]
    assert stored["key"] == "reports/q3.pdf"
    assert stored["size"] == len(PDF)
    assert stored["content_type"] == "application/pdf"
    assert stored["checksum"] == {"algorithm": "sha256", "value": hashlib.sha256(PDF).hexdigest()}
    assert stored["metadata"] == {"owner": "ana"}
    assert stored["tags"] == {"kind": "report"}
    assert read_bytes(tmp_path / "storage" / "acme" / "reports" / "q3.pdf") == PDF

    head = await harness.call("head", {"key": "reports/q3.pdf"})
    got = await harness.call("get", {"key": "reports/q3.pdf"})
    listed = await harness.call("list", {"prefix": "reports/"})
    folders = await harness.call("list", {"delimiter": "/"})

    assert head.data["object"]["checksum"] == stored["checksum"]
    assert base64.b64decode(got.data["content_base64"]) == PDF
    assert [o["key"] for o in listed.data["objects"]] == ["reports/q3.pdf"]
    assert folders.data["prefixes"] == ["reports/"]
    assert folders.data["objects"] == []

    deleted = await harness.call("delete", {"key": "reports/q3.pdf"})
    again = await harness.call("delete", {"key": "reports/q3.pdf"})
    missing = await harness.call("head", {"key": "reports/q3.pdf"})

    assert deleted.data["deleted"] is True
    assert again.data["deleted"] is False
    assert missing.data["error"]["code"] == "not_found"


async def test_a_tenant_never_reaches_another_tenants_objects(harness: StorageHarness) -> None:
    await harness.put("secret.txt", b"acme only", tenant="acme")

    theirs = await harness.call("get", {"key": "secret.txt"}, tenant="globex")
    listing = await harness.call("list", {}, tenant="globex")
    copy = await harness.call(
        "copy", {"source": {"key": "../acme/secret.txt"}, "key": "stolen.txt"}, tenant="globex"
    )

    assert theirs.data["error"]["code"] == "not_found"
    assert listing.data["objects"] == []
    assert copy.data["error"]["code"] == "invalid_request"


@pytest.mark.parametrize(
    "key",
    [
        "../escape.txt",
        "/etc/passwd",
        "a/../../b",
        "a\\b",
        "a%2F..%2Fb",
        "a\uff0fb",
        "a\u2215b",
        "nul\x00byte",
        "a//b",
    ],
)
async def test_hostile_keys_are_refused_and_nothing_is_written(
    harness: StorageHarness, tmp_path: Path, key: str
) -> None:
    refused = await harness.put(key, b"x")

    assert refused.type == "ferryman.storage.failed"
    assert refused.data["error"]["code"] == "invalid_request"
    assert files_under(tmp_path) == []


async def test_invalid_tenant_names_are_refused(harness: StorageHarness) -> None:
    refused = await harness.put("a.txt", b"x", tenant="../other")

    assert refused.data["error"]["code"] == "permission_denied"


async def test_a_checksum_mismatch_stores_nothing(harness: StorageHarness) -> None:
    refused = await harness.put("a.txt", b"hello", sha256="0" * 64)
    missing = await harness.call("head", {"key": "a.txt"})

    assert refused.data["error"]["code"] == "precondition_failed"
    assert missing.data["error"]["code"] == "not_found"


async def test_the_content_type_is_detected_not_trusted(harness: StorageHarness) -> None:
    lying = await harness.put("fake.png", b"plain text, not an image", content_type="image/png")
    text = await harness.put("notes.md", b"# Notes\n", content_type="text/markdown")

    assert lying.data["error"]["code"] == "invalid_request"
    assert "text/plain" in lying.data["error"]["message"]
    assert text.data["object"]["content_type"] == "text/markdown"


async def test_if_absent_refuses_an_existing_key(harness: StorageHarness) -> None:
    await harness.put("once.txt", b"first")

    second = await harness.put("once.txt", b"second", if_absent=True)

    assert second.data["error"]["code"] == "conflict"


async def test_a_redelivered_put_does_not_write_again(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    data = {"key": "doc.txt", "content_base64": base64.b64encode(b"v1").decode()}
    async with running_storage_worker(kafka_bootstrap, unique, tmp_path) as first_run:
        first = await first_run.result(await first_run.send("put", data, request_id="put-1"))
    # A new replica (no memory of the request) gets the same request again, as after a
    # crash before the commit.
    async with running_storage_worker(kafka_bootstrap, unique, tmp_path) as second_run:
        await second_run.send("put", data, request_id="put-1")
        replies = await second_run.replies("put-1", count=2)

    assert first.data["created"] is True
    assert replies[-1].data["created"] is False
    assert replies[-1].data["object"]["version"] == first.data["object"]["version"]
    events = await second_run.events(until=2)
    assert [e.data["object"]["version"] for e in events] == [first.data["object"]["version"]] * 2


async def test_a_redelivered_create_only_copy_and_move_answer_with_their_first_write(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    copy = {"source": {"key": "in/a.txt"}, "key": "out/a.txt", "if_absent": True}
    move = {"source": {"key": "in/b.txt"}, "key": "done/b.txt", "move": True}
    async with running_storage_worker(kafka_bootstrap, unique, tmp_path) as first_run:
        await first_run.put("in/a.txt", b"alpha")
        await first_run.put("in/b.txt", b"beta")
        first_copy = await first_run.result(await first_run.send("copy", copy, request_id="cp-1"))
        first_move = await first_run.result(await first_run.send("copy", move, request_id="mv-1"))
        other = await first_run.call("copy", copy)  # another request: the key is taken
        await first_run.put("in/b.txt", b"beta, again")  # after the move, a new object
    # A new replica (no memory of the requests) gets both again, as after a crash before
    # the commit: no second write, no conflict, and the move neither fails on its gone
    # source nor deletes the new object there.
    async with running_storage_worker(kafka_bootstrap, unique, tmp_path) as second_run:
        await second_run.send("copy", copy, request_id="cp-1")
        await second_run.send("copy", move, request_id="mv-1")
        copies = await second_run.replies("cp-1", count=2)
        moves = await second_run.replies("mv-1", count=2)

    assert first_copy.type == "ferryman.storage.copy.completed", first_copy.data
    assert other.data["error"]["code"] == "conflict"
    assert copies[-1].type == "ferryman.storage.copy.completed", copies[-1].data
    assert copies[-1].data["object"] == first_copy.data["object"]
    assert moves[-1].type == "ferryman.storage.copy.completed", moves[-1].data
    assert moves[-1].data["object"] == first_move.data["object"]
    assert moves[-1].data["moved"] is True
    assert read_bytes(tmp_path / "storage" / "acme" / "done" / "b.txt") == b"beta"
    # The redelivered move did not delete what was put at its source key since.
    assert read_bytes(tmp_path / "storage" / "acme" / "in" / "b.txt") == b"beta, again"


async def test_copy_move_and_metadata_update_publish_object_events(
    harness: StorageHarness,
) -> None:
    await harness.put("in/a.txt", b"alpha", metadata={"stage": "raw"})

    copied = await harness.call("copy", {"source": {"key": "in/a.txt"}, "key": "out/a.txt"})
    moved = await harness.call(
        "copy", {"source": {"key": "in/a.txt"}, "key": "done/a.txt", "move": True}
    )
    updated = await harness.call(
        "metadata.update", {"key": "done/a.txt", "metadata": {"stage": "done"}}
    )
    gone = await harness.call("head", {"key": "in/a.txt"})

    assert copied.data["object"]["metadata"] == {"stage": "raw"}
    assert moved.data["moved"] is True
    assert updated.data["object"]["metadata"] == {"stage": "done"}
    assert gone.data["error"]["code"] == "not_found"
    events = await harness.events(until=5)
    kinds = [(e.type.rsplit(".", 1)[-1], e.data["object"]["key"], e.data["cause"]) for e in events]
    assert kinds == [
        ("created", "in/a.txt", "put"),
        ("created", "out/a.txt", "copy"),
        ("created", "done/a.txt", "move"),
        ("deleted", "in/a.txt", "move"),
        ("metadata_changed", "done/a.txt", "metadata"),
    ]
    assert all(e.data["tenant"] == "acme" for e in events)
    # The claim check: each event names its object (CloudEvents' dataref extension), in a
    # form a chat's dataref part takes as it is.
    assert [e.attributes["dataref"] for e in events[:2]] == [
        "ferryman-storage://local/in/a.txt",
        "ferryman-storage://local/out/a.txt",
    ]
    assert parse_dataref(events[1].attributes["dataref"]) == ObjectRef(
        key="out/a.txt", backend="local"
    )


async def test_inline_limits(kafka_bootstrap: str, unique: str, tmp_path: Path) -> None:
    async with running_storage_worker(
        kafka_bootstrap, unique, tmp_path, inline_limit=1024
    ) as harness:
        big = await harness.put("big.bin", b"\x01" * 2048)
        await harness.put("ok.bin", b"\x01" * 1000)
        url = await harness.call("get", {"key": "ok.bin", "delivery": "url"})

        assert big.data["error"]["code"] == "too_large"
        assert "presign" in big.data["error"]["message"]
        assert "/objects?" in url.data["url"]  # served by the worker (test_storage_local_urls_e2e)


async def test_a_policy_with_s3_and_local_spaces(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    async with s3_bucket() as bucket:
        policy = {
            "backends": {
                "local": {"type": "local", "root": str(tmp_path / "disk")},
                "s3": {
                    "type": "s3",
                    "bucket": bucket,
                    "endpoint_url": moto_endpoint(),
                    "access_key_id": "env:TEST_S3_KEY",
                    "secret_access_key": "env:TEST_S3_SECRET",
                },
            },
            "tenants": {
                "acme": {
                    "default": "s3",
                    "spaces": {"s3": "tenants/acme/", "local": "acme/"},
                    "content_types": ["application/pdf", "text/*"],
                    "max_object_bytes": 100,
                }
            },
        }
        environ = {"TEST_S3_KEY": MOTO_ACCESS_KEY, "TEST_S3_SECRET": MOTO_SECRET_KEY}
        async with running_storage_worker(
            kafka_bootstrap, unique, tmp_path, policy=policy, environ=environ
        ) as harness:
            put = await harness.put("docs/a.txt", b"to the cloud")
            to_disk = await harness.call(
                "copy", {"source": {"key": "docs/a.txt"}, "key": "a.txt", "backend": "local"}
            )
            url = await harness.call("get", {"key": "docs/a.txt", "delivery": "url"})
            image = await harness.put("cat.png", b"\x89PNG\r\n\x1a\n" + bytes(16))
            big = await harness.put("big.txt", b"x" * 101)
            stranger = await harness.put("a.txt", b"hi", tenant="globex")

            assert put.data["object"]["backend"] == "s3"
            assert to_disk.data["object"]["backend"] == "local"
            assert to_disk.data["object"]["checksum"] == put.data["object"]["checksum"]
            assert read_bytes(tmp_path / "disk" / "acme" / "a.txt") == b"to the cloud"
            async with httpx2.AsyncClient() as client:
                fetched = await client.get(url.data["url"])
            assert fetched.content == b"to the cloud"
            assert image.data["error"]["code"] == "permission_denied"
            assert big.data["error"]["code"] == "too_large"
            assert stranger.data["error"]["code"] == "permission_denied"
            async with admin_client() as s3:
                listed = await s3.list_objects_v2(Bucket=bucket)
            assert [o["Key"] for o in listed["Contents"]] == ["tenants/acme/docs/a.txt"]


async def test_an_object_stored_without_a_checksum_copies_to_s3_with_one(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    # A file another program wrote into the local root has no stored checksum; S3 needs one
    # before the first byte, so the worker computes it on the way (spooling the bytes).
    data = b"written by another program\n" * 1000
    (tmp_path / "disk" / "acme").mkdir(parents=True)
    (tmp_path / "disk" / "acme" / "dropped.txt").write_bytes(data)
    async with s3_bucket() as bucket:
        policy = {
            "backends": {
                "local": {"type": "local", "root": str(tmp_path / "disk")},
                "s3": {
                    "type": "s3",
                    "bucket": bucket,
                    "endpoint_url": moto_endpoint(),
                    "access_key_id": "env:TEST_S3_KEY",
                    "secret_access_key": "env:TEST_S3_SECRET",
                },
            },
            "tenants": {"acme": {"spaces": {"local": "acme/", "s3": "tenants/acme/"}}},
        }
        environ = {"TEST_S3_KEY": MOTO_ACCESS_KEY, "TEST_S3_SECRET": MOTO_SECRET_KEY}
        async with running_storage_worker(
            kafka_bootstrap, unique, tmp_path, policy=policy, environ=environ
        ) as harness:
            before = await harness.call("head", {"key": "dropped.txt", "backend": "local"})
            copied = await harness.call(
                "copy",
                {"source": {"key": "dropped.txt", "backend": "local"}, "key": "d.txt",
                 "backend": "s3"},
            )  # fmt: skip
            got = await harness.call("get", {"key": "d.txt", "backend": "s3"})

    assert "checksum" not in before.data["object"]  # (None is left out of replies)
    assert copied.type == "ferryman.storage.copy.completed", copied.data
    stored = copied.data["object"]
    assert stored["checksum"] == {"algorithm": "sha256", "value": hashlib.sha256(data).hexdigest()}
    assert {c["algorithm"] for c in stored["checksums"]} == {"sha256", "crc32c"}
    assert base64.b64decode(got.data["content_base64"]) == data


async def test_a_tenants_request_quota(kafka_bootstrap: str, unique: str, tmp_path: Path) -> None:
    policy = {
        "backends": {"local": {"type": "local", "root": str(tmp_path / "disk")}},
        "tenants": {
            "acme": {"spaces": {"local": "acme/"}, "rate_limit": {"requests": 2, "window": 600}},
            "*": {"spaces": {"local": "{tenant}/"}},
        },
    }
    async with running_storage_worker(kafka_bootstrap, unique, tmp_path, policy=policy) as harness:
        first = await harness.put("a.txt", b"one")
        second = await harness.call("head", {"key": "a.txt"})
        third = await harness.call("head", {"key": "a.txt"})
        other = await harness.put("b.txt", b"two", tenant="globex")

        assert first.type == "ferryman.storage.put.completed"
        assert second.type == "ferryman.storage.head.completed"
        assert third.data["error"]["code"] == "rate_limited"
        assert third.data["error"]["retryable"] is True
        assert other.type == "ferryman.storage.put.completed"
