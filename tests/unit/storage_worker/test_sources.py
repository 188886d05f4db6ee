"""Fetching a put's content from a source URL: against a local HTTP server, names resolved
by an injected resolver (no real DNS), every hop checked, statuses in the taxonomy."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any, cast

import google_crc32c
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import BaseModel

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman.contracts.storage import SourceRef, StorageProgress
from ferryman_runtime.replies import ReplyStream
from storage_worker.policy import SourceAccess
from storage_worker.sources import Announced, SourceFetcher

MIB = 1024 * 1024
BODY = b"%PDF-1.4\n" + bytes(range(256)) * (9 * MIB // 256)


class Replies:
    def __init__(self) -> None:
        self.events: list[tuple[str, BaseModel]] = []

    async def emit(self, event_type: str, payload: BaseModel) -> None:
        self.events.append((event_type, payload))


class Resolver:
    """Maps every name it knows to the local server's address."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        if host not in self.names:
            raise OSError("unknown name")
        return [self.names[host]]


class Origin:
    """A local HTTP server: what it serves and what it was asked."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        app = web.Application()
        app.router.add_get("/{name:.*}", self.handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({"path": request.path_qs, **request.headers})
        name = request.match_info["name"]
        if name.startswith("status/"):
            return web.Response(status=int(name.split("/")[1]), text="no")
        if name.startswith("redirect/"):
            raise web.HTTPFound(request.query["to"])
        if name == "loop":
            raise web.HTTPFound("/loop")
        if name == "chunked":
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(BODY), MIB):
                await response.write(BODY[start : start + MIB])
            await response.write_eof()
            return response
        return web.Response(body=BODY, content_type="application/pdf")


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    served = Origin()
    await served.server.start_server()
    try:
        yield served
    finally:
        await served.server.close()


NOTHING_ANNOUNCED = Announced(sha256=None, crc32c=None)
PRIVATE_OK = SourceAccess(schemes=["http"], hosts=["files.partner.io"], allow_private=True)


def url(origin: Origin, path: str, host: str = "files.partner.io") -> str:
    return f"http://{host}:{origin.server.port}{path}"


async def fetch(
    source: SourceRef,
    rule: SourceAccess | None,
    resolver: Resolver,
    *,
    announced: Announced = NOTHING_ANNOUNCED,
    limit: int | None = None,
    replies: Replies | None = None,
) -> tuple[bytes, str, str]:
    ticks = iter(range(1_000_000))
    fetcher = SourceFetcher(resolver, clock=lambda: float(next(ticks)))
    async with fetcher.open(
        source,
        rule,
        announced=announced,
        limit=limit,
        content_type_of=lambda head: "application/pdf" if head.startswith(b"%PDF") else "x/y",
        replies=cast(ReplyStream, replies or Replies()),
        deadline=None,
    ) as content:
        data = b"".join([chunk async for chunk in content.body])
        return data, content.sha256, content.crc32c


async def refused(*args: Any, **kwargs: Any) -> FerrymanError:
    with pytest.raises(FerrymanError) as failed:
        await fetch(*args, **kwargs)
    return failed.value


async def test_an_allowed_host_is_fetched_from_the_address_it_resolved_to(
    origin: Origin,
) -> None:
    resolver = Resolver({"files.partner.io": "127.0.0.1"})
    replies = Replies()

    data, sha256, crc32c = await fetch(
        SourceRef(url=url(origin, "/a.pdf"), headers={"Authorization": "Bearer t0ken"}),
        PRIVATE_OK,
        resolver,
        replies=replies,
    )

    assert data == BODY
    assert sha256 == hashlib.sha256(BODY).hexdigest()
    assert crc32c == google_crc32c.Checksum(BODY).digest().hex()
    assert resolver.calls == ["files.partner.io"]
    assert origin.requests[0]["Host"] == f"files.partner.io:{origin.server.port}"
    assert origin.requests[0]["Authorization"] == "Bearer t0ken"
    progress = [cast(StorageProgress, payload) for _, payload in replies.events]
    assert len(progress) == 3  # at 4 and 8 MiB, then the total
    assert all(p.stage == "fetch" for p in progress)
    assert progress[-1].bytes_done == progress[-1].bytes_total == len(BODY)


async def test_without_allow_private_a_name_resolving_to_loopback_is_never_connected(
    origin: Origin,
) -> None:
    rule = SourceAccess(schemes=["http"], hosts=["files.partner.io"])

    error = await refused(
        SourceRef(url=url(origin, "/a.pdf")), rule, Resolver({"files.partner.io": "127.0.0.1"})
    )

    assert error.code is ErrorCode.PERMISSION_DENIED
    assert "loopback" in error.message
    assert origin.requests == []


async def test_a_redirect_to_the_metadata_service_is_refused(origin: Origin) -> None:
    target = "http://169.254.169.254/latest/meta-data/"
    rule = SourceAccess(schemes=["http"], hosts=["*"], allow_private=True)

    error = await refused(
        SourceRef(url=url(origin, f"/redirect/?to={target}")),
        rule,
        Resolver({"files.partner.io": "127.0.0.1"}),
    )

    assert error.code is ErrorCode.PERMISSION_DENIED
    assert "link-local" in error.message


async def test_a_redirect_to_a_name_resolving_to_the_metadata_service_is_refused(
    origin: Origin,
) -> None:
    rule = SourceAccess(schemes=["http"], hosts=["*.partner.io"], allow_private=True)
    resolver = Resolver({"files.partner.io": "127.0.0.1", "internal.partner.io": "169.254.169.254"})
    target = "http://internal.partner.io/latest/meta-data/"

    error = await refused(SourceRef(url=url(origin, f"/redirect/?to={target}")), rule, resolver)

    assert error.code is ErrorCode.PERMISSION_DENIED
    assert resolver.calls == ["files.partner.io", "internal.partner.io"]
    assert len(origin.requests) == 1


async def test_a_redirect_to_a_host_outside_the_policy_is_refused(origin: Origin) -> None:
    error = await refused(
        SourceRef(url=url(origin, "/redirect/?to=http://evil.io/x")),
        PRIVATE_OK,
        Resolver({"files.partner.io": "127.0.0.1", "evil.io": "127.0.0.1"}),
    )

    assert error.code is ErrorCode.PERMISSION_DENIED
    assert "evil.io" in error.message


async def test_redirects_are_followed_and_headers_stay_with_their_origin(origin: Origin) -> None:
    rule = SourceAccess(schemes=["http"], hosts=["*.partner.io"], allow_private=True)
    resolver = Resolver({"files.partner.io": "127.0.0.1", "cdn.partner.io": "127.0.0.1"})
    elsewhere = url(origin, "/b.pdf", host="cdn.partner.io")
    hop = url(origin, f"/redirect/?to={elsewhere}")

    data, _, _ = await fetch(
        SourceRef(url=url(origin, f"/redirect/?to={hop}"), headers={"Authorization": "secret"}),
        rule,
        resolver,
    )

    assert data == BODY
    assert [r["path"].split("?")[0] for r in origin.requests] == [
        "/redirect/",
        "/redirect/",
        "/b.pdf",
    ]
    assert [r.get("Authorization") for r in origin.requests] == ["secret", "secret", None]


async def test_more_than_three_redirects_fail(origin: Origin) -> None:
    error = await refused(
        SourceRef(url=url(origin, "/loop")), PRIVATE_OK, Resolver({"files.partner.io": "127.0.0.1"})
    )

    assert error.code is ErrorCode.UNAVAILABLE
    assert len(origin.requests) == 4


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (404, ErrorCode.NOT_FOUND, False),
        (410, ErrorCode.NOT_FOUND, False),
        (401, ErrorCode.PERMISSION_DENIED, False),
        (403, ErrorCode.PERMISSION_DENIED, False),
        (429, ErrorCode.RATE_LIMITED, True),
        (503, ErrorCode.UNAVAILABLE, True),
        (500, ErrorCode.UNAVAILABLE, True),
        (400, ErrorCode.UNAVAILABLE, False),
    ],
)
async def test_statuses_map_to_the_taxonomy(
    origin: Origin, status: int, code: ErrorCode, retryable: bool
) -> None:
    error = await refused(
        SourceRef(url=url(origin, f"/status/{status}?X-Amz-Signature=s3cr3t")),
        PRIVATE_OK,
        Resolver({"files.partner.io": "127.0.0.1"}),
    )

    assert (error.code, error.retryable, error.status) == (code, retryable, status)
    assert "s3cr3t" not in error.message


@pytest.mark.parametrize("path", ["/a.pdf", "/chunked"])
async def test_content_over_the_limit_fails_too_large(origin: Origin, path: str) -> None:
    error = await refused(
        SourceRef(url=url(origin, path)),
        PRIVATE_OK,
        Resolver({"files.partner.io": "127.0.0.1"}),
        limit=MIB,
    )

    assert error.code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize(
    "announced",
    [
        Announced(sha256="0" * 64, crc32c=None),
        Announced(sha256=None, crc32c="00000000"),
        Announced(sha256=hashlib.sha256(BODY).hexdigest(), crc32c="00000000"),
    ],
)
async def test_a_checksum_mismatch_fails_when_the_last_byte_arrived(
    origin: Origin, announced: Announced
) -> None:
    error = await refused(
        SourceRef(url=url(origin, "/chunked")),
        PRIVATE_OK,
        Resolver({"files.partner.io": "127.0.0.1"}),
        announced=announced,
    )

    assert error.code is ErrorCode.PRECONDITION_FAILED


async def test_announced_checksums_that_match_stream_through(origin: Origin) -> None:
    announced = Announced(
        sha256=hashlib.sha256(BODY).hexdigest(),
        crc32c=google_crc32c.Checksum(BODY).digest().hex(),
    )

    data, sha256, crc32c = await fetch(
        SourceRef(url=url(origin, "/chunked")),
        PRIVATE_OK,
        Resolver({"files.partner.io": "127.0.0.1"}),
        announced=announced,
    )

    assert (data, sha256, crc32c) == (BODY, announced.sha256, announced.crc32c)


@pytest.mark.parametrize("name", ["Host", "transfer-encoding", "Proxy-Authorization"])
async def test_headers_that_pick_another_host_or_framing_are_refused(
    origin: Origin, name: str
) -> None:
    error = await refused(
        SourceRef(url=url(origin, "/a.pdf"), headers={name: "admin.internal"}),
        PRIVATE_OK,
        Resolver({"files.partner.io": "127.0.0.1"}),
    )

    assert error.code is ErrorCode.INVALID_REQUEST
    assert "admin.internal" not in error.message
    assert origin.requests == []


@pytest.mark.parametrize(
    ("path", "headers"),
    [("\\@files.partner.io/a.pdf", {}), ("/a.pdf", {"X-Note": "one\r\nHost: admin.internal"})],
    ids=["backslash", "header-with-crlf"],
)
async def test_what_the_client_cannot_send_is_an_invalid_request_not_a_crash(
    origin: Origin, path: str, headers: dict[str, str]
) -> None:
    error = await refused(
        SourceRef(url=url(origin, path), headers=headers),
        PRIVATE_OK,
        Resolver({"files.partner.io": "127.0.0.1"}),
    )

    assert (error.code, error.retryable) == (ErrorCode.INVALID_REQUEST, False)
    assert "admin.internal" not in error.message
    assert origin.requests == []
