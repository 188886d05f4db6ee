"""`ferryman storage …` and `StorageClient` against a real storage_worker (local backend)
through the real Kafka: put a file, list it, get it back byte for byte, head, copy, move,
delete; a missing key, a hostile key and an unsigned URL fail with exit code 2; on S3
(moto), a large object goes up and comes down by presigned URL."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ferryman.cli import main as ferryman
from ferryman.contracts.storage import CopyCompleted, StorageProgress
from ferryman.storage_client import StorageClient, StorageFailedError
from tests.integration.storage_harness import StorageHarness, running_storage_worker
from tests.storage.documents import image_bytes
from tests.storage.s3_store import MOTO_ACCESS_KEY, MOTO_SECRET_KEY, moto_endpoint, s3_bucket

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# Every byte value, so a text-mode slip anywhere would show.
CONTENT = bytes(range(256)) * 40 + b"\r\n\x00 end"


@pytest.fixture
async def harness(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> AsyncIterator[StorageHarness]:
    async with running_storage_worker(kafka_bootstrap, unique, tmp_path) as running:
        yield running


def files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()] if folder.exists() else []


async def run(harness: StorageHarness, *args: str) -> int:
    """Run `ferryman storage ARGS` in a thread (the worker runs in this loop), as tenant
    `acme` on the harness's topics."""
    argv = [
        "storage",
        *args,
        *("-b", harness.bootstrap, "--tenant", "acme", "--timeout", "30"),
        *("--request-topic", harness.settings.request_topic),
        *("--reply-topic", harness.settings.default_reply_topic),
    ]
    return await asyncio.wait_for(asyncio.to_thread(ferryman, argv), timeout=60)


async def test_put_ls_get_head_cp_rm_round_trip(
    harness: StorageHarness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "upload.bin"
    source.write_bytes(CONTENT)
    back = tmp_path / "download.bin"

    put = await run(
        harness, "put", "docs/data.bin", str(source), "--meta", "owner=ana", "--tag", "k=v"
    )
    put_out = capsys.readouterr().out
    listed = await run(harness, "ls", "docs/")
    table = capsys.readouterr().out.splitlines()
    got = await run(harness, "get", "docs/data.bin", "-o", str(back))
    capsys.readouterr()
    head = await run(harness, "head", "docs/data.bin", "--json")
    head_json = json.loads(capsys.readouterr().out)

    assert put == 0
    assert put_out.startswith(f"stored docs/data.bin ({len(CONTENT)} bytes, ")
    assert listed == 0
    assert table[0].split() == ["SIZE", "TYPE", "MODIFIED", "KEY"]
    assert table[1].split()[0] == str(len(CONTENT))
    assert table[1].split()[-1] == "docs/data.bin"
    assert got == 0
    assert back.read_bytes() == CONTENT
    assert head == 0
    assert head_json["size"] == len(CONTENT)
    assert head_json["checksum"] == {
        "algorithm": "sha256",
        "value": hashlib.sha256(CONTENT).hexdigest(),
    }
    assert (head_json["metadata"], head_json["tags"]) == ({"owner": "ana"}, {"k": "v"})

    copied = await run(harness, "cp", "docs/data.bin", "backup/data.bin")
    copy_out = capsys.readouterr().out
    moved = await run(harness, "cp", "backup/data.bin", "archive/data.bin", "--move")
    move_out = capsys.readouterr().out
    folders = await run(harness, "ls", "--delimiter", "/")
    folder_table = capsys.readouterr().out.splitlines()

    assert copied == 0
    assert copy_out.startswith("copied docs/data.bin to backup/data.bin (")
    assert moved == 0
    assert move_out.startswith("moved backup/data.bin to archive/data.bin (")
    assert folders == 0
    assert [row.split() for row in folder_table[1:]] == [
        ["PRE", "-", "-", "archive/"],
        ["PRE", "-", "-", "docs/"],
    ]

    removed = await run(harness, "rm", "docs/data.bin")
    removed_out = capsys.readouterr().out
    again = await run(harness, "rm", "docs/data.bin")
    again_err = capsys.readouterr().err
    remaining = await run(harness, "ls", "--json")
    remaining_json = json.loads(capsys.readouterr().out)

    assert (removed, removed_out) == (0, "deleted docs/data.bin\n")
    assert again == 0
    assert "no object docs/data.bin: nothing deleted" in again_err
    assert remaining == 0
    assert [o["key"] for o in remaining_json["objects"]] == ["archive/data.bin"]
    assert (harness.settings.local_root / "acme" / "archive" / "data.bin").read_bytes() == CONTENT


async def test_stdin_in_and_stdout_out(
    harness: StorageHarness,
    monkeypatch: pytest.MonkeyPatch,
    capfdbinary: pytest.CaptureFixture[bytes],
) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(CONTENT)))

    put = await run(harness, "put", "piped.bin", "-")
    capfdbinary.readouterr()

    got = await run(harness, "get", "piped.bin")  # -o - by default
    out = capfdbinary.readouterr().out

    assert put == 0
    assert got == 0
    assert out == CONTENT


async def test_failures_exit_2_with_the_error_code(
    harness: StorageHarness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "x.txt"
    source.write_bytes(b"x")
    target = tmp_path / "never.bin"

    missing = await run(harness, "get", "no/such.bin", "-o", str(target))
    missing_err = capsys.readouterr().err
    hostile = await run(harness, "put", "../escape.txt", str(source))
    hostile_err = capsys.readouterr().err
    hostile_prefix = await run(harness, "ls", "../")
    prefix_err = capsys.readouterr().err
    unsigned = await run(harness, "presign", "x.txt", "--method", "PUT", "--expires", "7200")
    unsigned = (unsigned, capsys.readouterr())

    assert missing == 2
    assert missing_err.startswith("failed: not_found: ")
    assert not target.exists()
    assert hostile == 2
    assert hostile_err.startswith("failed: invalid_request: ")
    assert hostile_prefix == 2
    assert prefix_err.startswith("failed: invalid_request: ")
    # Past the tenant's maximum expiry (3600 s): the refusal is the worker's, with its code.
    assert unsigned[0] == 2
    assert unsigned[1].out == ""
    assert unsigned[1].err.startswith("failed: invalid_request: ")
    assert files_under(harness.settings.local_root) == []
    assert not (tmp_path / "escape.txt").exists()


async def test_if_absent_refuses_to_overwrite(
    harness: StorageHarness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_bytes(b"first version\n")
    second.write_bytes(b"second version\n")
    back = tmp_path / "back.txt"

    created = await run(harness, "put", "once.txt", str(first), "--if-absent")
    refused = await run(harness, "put", "once.txt", str(second), "--if-absent")
    refused_err = capsys.readouterr().err
    await run(harness, "get", "once.txt", "-o", str(back))

    assert created == 0
    assert refused == 2
    assert "failed: conflict: " in refused_err
    assert back.read_bytes() == b"first version\n"


async def test_client_round_trip_with_progress_and_a_failure(harness: StorageHarness) -> None:
    async with StorageClient(
        harness.bootstrap,
        request_topic=harness.settings.request_topic,
        reply_topic=harness.settings.default_reply_topic,
    ) as storage:
        put = await storage.put("c/a.bin", CONTENT, tenant="acme", metadata={"n": "1"})
        data = await storage.get_bytes("c/a.bin", tenant="acme")
        events = [event async for event in storage.copy_stream("c/a.bin", "c/b.bin", tenant="acme")]
        updated = await storage.update_metadata("c/b.bin", tags={"t": "2"}, tenant="acme")
        keys = [info.key async for info in storage.list_all("c/", page_size=1, tenant="acme")]
        deleted = await storage.delete("c/a.bin", tenant="acme")
        with pytest.raises(StorageFailedError) as missing:
            await storage.head("c/a.bin", tenant="acme")

    assert put.created
    assert put.object.checksum is not None
    assert put.object.checksum.value == hashlib.sha256(CONTENT).hexdigest()
    assert data == CONTENT
    assert all(isinstance(event, StorageProgress) for event in events[:-1])
    assert isinstance(events[-1], CopyCompleted)
    assert events[-1].object.key == "c/b.bin"
    assert (updated.tags, updated.metadata) == ({"t": "2"}, {"n": "1"})
    assert keys == ["c/a.bin", "c/b.bin"]
    assert deleted.deleted
    assert missing.value.error.code == "not_found"


def http(method: str, url: str, data: bytes | None = None, **headers: str) -> bytes:
    """A plain HTTP request (the upload or download a producer does with a presigned URL)."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


async def test_large_objects_move_by_presigned_url_on_s3(
    kafka_bootstrap: str, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = bytes(range(256)) * 20  # 5120 bytes, over the worker's 1024-byte inline limit
    source, target = tmp_path / "upload.bin", tmp_path / "big.bin"
    source.write_bytes(big)
    async with s3_bucket() as bucket:
        policy = {
            "backends": {
                "s3": {
                    "type": "s3",
                    "bucket": bucket,
                    "endpoint_url": moto_endpoint(),
                    "access_key_id": "env:S3_KEY_ID",
                    "secret_access_key": "env:S3_SECRET",
                    "addressing_style": "path",
                }
            },
            "tenants": {"acme": {"spaces": {"s3": "tenants/acme/"}, "max_presign_seconds": 3600}},
        }
        environ = {"S3_KEY_ID": MOTO_ACCESS_KEY, "S3_SECRET": MOTO_SECRET_KEY}
        async with running_storage_worker(
            kafka_bootstrap, unique, tmp_path, policy=policy, environ=environ, inline_limit=1024
        ) as harness:
            refused = await run(harness, "put", "big.bin", str(source), "--inline-limit", "1024")
            refused_err = capsys.readouterr().err
            signed = await run(
                harness, "presign", "big.bin", "--method", "PUT", "--content-type", "text/x-a"
            )
            url, *header_lines = capsys.readouterr().out.splitlines()
            headers = dict(line.split(": ", 1) for line in header_lines)
            await asyncio.to_thread(http, "PUT", url, big, **headers)

            got = await run(harness, "get", "big.bin", "-o", str(target))
            got_out, got_err = capsys.readouterr()
            asked = await run(harness, "get", "big.bin", "--url", "--expires", "60")
            asked_out = capsys.readouterr().out
            downloaded = await asyncio.to_thread(http, "GET", got_out.strip())

    assert refused == 2
    assert "presign KEY --method PUT" in refused_err
    assert signed == 0
    assert headers == {"Content-Type": "text/x-a"}
    assert got == 3
    assert not target.exists()
    assert "over the inline limit: nothing written" in got_err
    assert url.split("?")[0] not in got_err  # URLs only on stdout
    assert downloaded == big
    assert asked == 0
    assert asked_out.startswith("http")


async def test_process_prints_the_extracted_text_or_names_the_failing_step(
    harness: StorageHarness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "notes.md"
    page.write_text("# Minutes\n\nThe *ferry* leaves at **noon**.\n")
    image = tmp_path / "cat.png"
    image.write_bytes(image_bytes(32, 32))
    await run(harness, "put", "notes.md", str(page), "--content-type", "text/markdown")
    await run(harness, "put", "cat.png", str(image))
    capsys.readouterr()

    text = await run(harness, "process", "notes.md", "text", "--text")
    text_out = capsys.readouterr()
    listed = await run(harness, "process", "notes.md", "text")
    listed_out = capsys.readouterr().out
    failed = await run(harness, "process", "cat.png", "text")
    failed_err = capsys.readouterr().err

    assert text == 0
    assert "Minutes" in text_out.out
    assert "The ferry leaves at noon." in text_out.out
    assert "extract_text" in text_out.err  # progress by step
    assert listed == 0
    assert "(outputs reused)" in listed_out
    assert "extract_text: notes.md.derived/text/extract_text.txt" in listed_out
    assert failed == 2
    assert "step extract_text failed" in failed_err
    assert "invalid_request" in failed_err
