"""`ferryman storage …` and `StorageClient`: argument parsing, input checked before anything
is published, how objects and listings are shown, and the requests and replies the client
builds and accepts."""

from __future__ import annotations

import base64
import hashlib
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ferryman.cli import build_parser, main
from ferryman.cli_storage_format import (
    describe_invalid,
    describe_object,
    describe_progress,
    listing_rows,
    object_line,
    pair,
    read_content,
    render_listing,
)
from ferryman.contracts.storage import (
    DEFAULT_INLINE_LIMIT,
    STORAGE_COPY_COMPLETED,
    STORAGE_COPY_REQUESTED,
    STORAGE_FAILED,
    STORAGE_GET_REQUESTED,
    STORAGE_PROGRESS,
    STORAGE_PUT_COMPLETED,
    STORAGE_PUT_REQUESTED,
    Checksum,
    CopyCompleted,
    GetCompleted,
    Lineage,
    ListCompleted,
    ObjectInfo,
    PutCompleted,
    PutRequest,
    StorageFailed,
    StorageProgress,
)
from ferryman.replies import ReplyRole, default_registry
from ferryman.storage_client import StorageClient
from ferryman.storage_requests import (
    StorageFailedError,
    StorageIntegrityError,
    inline_content,
    put_request,
    register_storage,
)

# Port 1 refuses connections: reaching Kafka would end with exit code 1, not 2.
NO_KAFKA = ("-b", "127.0.0.1:1")
MODIFIED = datetime(2026, 3, 1, 9, 30, 5, tzinfo=UTC)


def info(key: str = "reports/q3.pdf", **fields: Any) -> ObjectInfo:
    values: dict[str, Any] = {
        "backend": "local",
        "key": key,
        "size": 1234,
        "content_type": "application/pdf",
        "last_modified": MODIFIED,
        **fields,
    }
    return ObjectInfo.model_validate(values)


def test_subcommand_options_and_storage_topic_defaults() -> None:
    parser = build_parser()

    put = parser.parse_args(
        [
            *("storage", "put", "notes/a.md", "a.md", "--meta", "owner=ana", "--meta", "eq=a=b"),
            *("--tag", "kind=note", "--if-absent", "--content-type", "text/markdown"),
            *("--tenant", "acme", "--backend", "s3", "-b", "k1:9092"),
        ]
    )
    copy = parser.parse_args(["storage", "cp", "a", "b", "--move", "--source-backend", "local"])
    listing = parser.parse_args(["storage", "ls", "--delimiter", "/", "--json"])
    get = parser.parse_args(["storage", "get", "a"])

    assert (put.storage_command, put.key, put.file) == ("put", "notes/a.md", "a.md")
    assert put.meta == [("owner", "ana"), ("eq", "a=b")]
    assert put.tag == [("kind", "note")]
    assert (put.if_absent, put.content_type) == (True, "text/markdown")
    assert (put.tenant, put.backend, put.bootstrap_servers) == ("acme", "s3", "k1:9092")
    assert put.inline_limit == DEFAULT_INLINE_LIMIT
    assert (put.request_topic, put.reply_topic) == ("storage.requests", "storage.results")
    assert (put.timeout, copy.timeout) == (60.0, 600.0)
    assert (copy.source, copy.key, copy.move, copy.source_backend) == ("a", "b", True, "local")
    assert (listing.prefix, listing.delimiter, listing.json) == ("", "/", True)
    assert (get.output, get.url, get.expires) == ("-", False, 900)


def test_presign_options() -> None:
    args = build_parser().parse_args(
        [
            *("storage", "presign", "big.bin", "--method", "PUT", "--expires", "60"),
            *("--content-type", "application/zip", "--reply-topic", "app.storage"),
        ]
    )

    assert (args.method, args.expires, args.content_type) == ("PUT", 60, "application/zip")
    assert (args.request_topic, args.reply_topic) == ("storage.requests", "app.storage")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("put", "k", "f", "--meta", "s3cret"), "argument --meta: expected NAME=VALUE"),
        (("put", "k", "f", "--tag", "=s3cret"), "argument --tag: expected NAME=VALUE"),
        (("presign", "k", "--method", "DELETE"), "argument --method: invalid choice"),
        (("get", "k", "--expires", "0"), "argument --expires: must be positive, not 0"),
        (("ls", "--delimiter", ":"), "argument --delimiter: invalid choice"),
    ],
)
def test_malformed_arguments_exit_2_without_repeating_values(
    argv: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["storage", *argv, *NO_KAFKA])

    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert message in err
    assert "s3cret" not in err


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    path = tmp_path / "five.txt"
    path.write_bytes(b"hello")
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ("put", "k", "{file}", "--meta", "bad name=s3cret"),
            "metadata.bad name.[key]: String should match",
        ),
        (("put", "k", "{file}", "--tag", "a=1", "--tag", "a=s3cret"), "--tag a is given twice"),
        (("put", "k", "{file}", "--inline-limit", "4"), "over the inline limit (4 bytes)"),
        (
            ("put", "k", "/no/such/file"),
            "put: cannot read /no/such/file: No such file or directory",
        ),
        (("put", "", "{file}"), "key: String should have at least 1 character"),
        (("presign", "k", "--expires", "604801"), "expires_in: Input should be less than"),
        (("ls", "--page-size", "1001"), "page_size: Input should be less than or equal to 1000"),
        (("cp", "a", "b", "--source-backend", "no/such"), "source.backend: String should"),
        (("head", "x" * 1025), "key: String should have at most 1024 characters"),
    ],
)
def test_invalid_input_exits_2_before_connecting(
    argv: tuple[str, ...], message: str, small_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["storage", *(a.replace("{file}", str(small_file)) for a in argv), *NO_KAFKA])

    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "s3cret" not in err


def test_content_over_the_limit_points_at_presign(small_file: Path) -> None:
    with pytest.raises(ValueError, match="presign KEY --method PUT"):
        read_content(str(small_file), 4)

    assert read_content(str(small_file), 5) == b"hello"


def test_content_comes_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\x00binary\xff")))

    assert read_content("-", 100) == b"\x00binary\xff"


def test_pairs_split_at_the_first_equals_sign() -> None:
    assert pair("a=b=c") == ("a", "b=c")
    assert pair("empty=") == ("empty", "")


def test_listing_shows_folders_first_then_size_type_modified_key() -> None:
    objects = [info(), info("notes/a.md", size=5, content_type=None, last_modified=None)]

    rows = listing_rows(objects, ["images/"])
    table = render_listing(objects, ["images/"]).splitlines()

    assert rows == [
        ["PRE", "-", "-", "images/"],
        ["1234", "application/pdf", "2026-03-01 09:30:05", "reports/q3.pdf"],
        ["5", "-", "-", "notes/a.md"],
    ]
    assert table[0].split() == ["SIZE", "TYPE", "MODIFIED", "KEY"]
    assert table[1].split() == ["PRE", "-", "-", "images/"]
    assert len(table) == 4


def test_an_object_is_described_line_by_line() -> None:
    described = info(
        checksum=Checksum(algorithm="sha256", value="ab" * 32),
        etag='"e1"',
        metadata={"owner": "ana"},
        tags={"kind": "report"},
        lineage=Lineage(source_key="raw/q3.pdf", pipeline="text", step="extract"),
    )

    assert describe_object(described).splitlines() == [
        "key: reports/q3.pdf",
        "backend: local",
        "size: 1234",
        "content type: application/pdf",
        f"checksum: sha256:{'ab' * 32}",
        "modified: 2026-03-01 09:30:05",
        'etag: "e1"',
        "metadata: owner=ana",
        "tag: kind=report",
        "derived from: raw/q3.pdf by text/extract",
    ]
    assert object_line(described) == "reports/q3.pdf (1234 bytes, application/pdf)"


def test_progress_and_invalid_requests_are_described() -> None:
    with pytest.raises(ValidationError) as invalid:
        PutRequest.model_validate({"key": "", "content_base64": "", "metadata": {"a b": "s3"}})

    assert describe_progress(
        StorageProgress(stage="copy", bytes_done=1024, bytes_total=4096, sequence=0)
    ) == ("[copy 1024/4096 bytes]")
    assert describe_progress(StorageProgress(stage="upload", bytes_done=7, sequence=1)) == (
        "[upload 7 bytes]"
    )
    assert describe_invalid(invalid.value).startswith(
        "key: String should have at least 1 character; metadata.a b.[key]: String should match"
    )


def test_storage_request_types_are_registered_with_their_replies() -> None:
    registry = register_storage(default_registry())

    put = registry.kind(STORAGE_PUT_REQUESTED)
    copy = registry.kind(STORAGE_COPY_REQUESTED)

    assert put.request_model is PutRequest
    assert {t: (r.model, r.role) for t, r in put.replies.items()} == {
        STORAGE_PROGRESS: (StorageProgress, ReplyRole.PROGRESS),
        STORAGE_PUT_COMPLETED: (PutCompleted, ReplyRole.COMPLETED),
        STORAGE_FAILED: (StorageFailed, ReplyRole.FAILED),
    }
    assert copy.replies[STORAGE_COPY_COMPLETED].model is CopyCompleted
    assert registry.kind(STORAGE_GET_REQUESTED).replies
    assert registry.kind("ferryman.llm.chat.requested").replies  # chat still known


def test_a_put_carries_the_content_and_its_sha256() -> None:
    request = put_request("a.bin", b"\x00\x01", metadata={"owner": "ana"}, if_absent=True)

    assert request.content_base64 is not None
    assert base64.b64decode(request.content_base64) == b"\x00\x01"
    assert request.sha256 == hashlib.sha256(b"\x00\x01").hexdigest()
    assert (request.metadata, request.if_absent) == ({"owner": "ana"}, True)
    with pytest.raises(ValueError, match=r'presign\(key, method="PUT"\)'):
        put_request("big.bin", b"x" * 11, inline_limit=10)


def test_inline_content_is_checked_against_the_objects_sha256() -> None:
    data = b"report"
    good = Checksum(algorithm="sha256", value=hashlib.sha256(data).hexdigest())
    bad = Checksum(algorithm="sha256", value=hashlib.sha256(b"other").hexdigest())
    encoded = base64.b64encode(data).decode()

    def got(checksum: Checksum | None, content: str | None = encoded) -> GetCompleted:
        return GetCompleted(
            object=info(checksum=checksum), content_base64=content, url=None if content else "u"
        )

    assert inline_content(got(good)) == data
    assert inline_content(got(None)) == data
    assert inline_content(got(good, None)) is None
    with pytest.raises(StorageIntegrityError) as corrupt:
        inline_content(got(bad))
    assert isinstance(corrupt.value, StorageFailedError)
    assert (corrupt.value.error.code, corrupt.value.error.retryable) == (
        "precondition_failed",
        True,
    )


class PagedStorage(StorageClient):
    """A client whose `list` answers from canned pages (nothing reaches Kafka)."""

    def __init__(self, pages: dict[str | None, ListCompleted]) -> None:
        super().__init__("127.0.0.1:1")
        self.pages = pages
        self.asked: list[tuple[str, str | None]] = []

    async def list(  # type: ignore[override]
        self, prefix: str = "", *, page_token: str | None = None, **options: Any
    ) -> ListCompleted:
        self.asked.append((prefix, page_token))
        return self.pages[page_token]


async def test_list_all_follows_the_page_tokens() -> None:
    client = PagedStorage(
        {
            None: ListCompleted(objects=[info("a")], next_page_token="t1"),
            "t1": ListCompleted(objects=[info("b"), info("c")], next_page_token="t2"),
            "t2": ListCompleted(objects=[]),
        }
    )

    keys = [listed.key async for listed in client.list_all("r/", tenant="acme")]

    assert keys == ["a", "b", "c"]
    assert client.asked == [("r/", None), ("r/", "t1"), ("r/", "t2")]


async def test_a_repeated_page_token_ends_the_listing_with_an_error() -> None:
    client = PagedStorage(
        {
            None: ListCompleted(objects=[info("a")], next_page_token="t1"),
            "t1": ListCompleted(objects=[info("b")], next_page_token="t1"),
        }
    )
    keys: list[str] = []

    async def collect() -> None:
        async for listed in client.list_all():
            keys.append(listed.key)

    with pytest.raises(RuntimeError, match="repeated a page token"):
        await collect()

    assert keys == ["a", "b"]


def test_the_inline_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="inline_limit must be positive"):
        StorageClient("127.0.0.1:1", inline_limit=0)
