"""HTTP plumbing of the `/objects` route (raw ASGI): one response, a request body checked
against its `Content-Length`, single byte ranges."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

from faststream.asgi.types import Receive, Scope, Send

from ferryman.contracts import ErrorCode, FerrymanError
from storage_worker.backends.port import Body
from storage_worker.signed_urls import UrlRefused

_RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})")


class HttpRefusal(Exception):
    """A request refused with `status` (the body names `code` and says `message`)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Upload:
    """A request body as chunks, checked to be exactly `Content-Length` bytes."""

    def __init__(self, receive: Receive, length: int) -> None:
        """Read the body `receive` gives, which must be `length` bytes."""
        self._receive = receive
        self._length = length
        self._received = 0
        self._done = False

    async def head(self, size: int) -> bytes:
        """The first `size` bytes (fewer when the body is shorter).

        Raises:
            FerrymanError: `invalid_request` when the body ends short of its length.
        """
        parts: list[bytes] = []
        taken = 0
        while taken < size and not self._done:
            chunk = await self._next()
            parts.append(chunk)
            taken += len(chunk)
        return b"".join(parts)

    async def chunks(self, head: bytes) -> AsyncIterator[bytes]:
        """`head`, then the rest of the body as it arrives.

        Raises:
            FerrymanError: `invalid_request` when the body ends short of its length (the
                store then keeps nothing of it).
        """
        if head:
            yield head
        while not self._done:
            chunk = await self._next()
            if chunk:
                yield chunk

    async def _next(self) -> bytes:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._done = True
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"the client left after {self._received} of {self._length} bytes",
            )
        chunk = bytes(message.get("body", b""))
        self._received += len(chunk)
        self._done = not message.get("more_body", False)
        if self._received > self._length or (self._done and self._received < self._length):
            self._done = True
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"the upload sent {self._received} bytes, not its Content-Length of"
                f" {self._length}: nothing stored",
            )
        return chunk


class Response:
    """Sends one response; an error after its start can only cut the stream."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def start(self, status: int, fields: dict[str, str]) -> None:
        """Send the status and header fields."""
        self.started = True
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode("latin-1")) for k, v in fields.items()],
            }
        )

    async def stream(self, body: AsyncIterator[bytes], receive: Receive) -> None:
        """Send `body`, stopping when the client leaves."""
        gone = asyncio.ensure_future(disconnected(receive))
        try:
            async for chunk in body:
                if gone.done():
                    return
                await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
            await self._send({"type": "http.response.body", "body": b""})
        finally:
            gone.cancel()

    async def json(
        self, status: int, document: dict[str, Any], fields: dict[str, str] | None = None
    ) -> None:
        """Send `document` as the whole response."""
        await self.start(status, {"content-type": "application/json", **(fields or {})})
        await self._send({"type": "http.response.body", "body": json.dumps(document).encode()})

    async def error(self, status: int, code: str, message: str) -> None:
        """Send `{"error": {"code", "message"}}`.

        Raises:
            ConnectionAbortedError: the response had started (the server then cuts the
                connection, so the client sees a short body, never a complete-looking one).
        """
        if self.started:
            raise ConnectionAbortedError(f"a response failed after its start: {code}")
        await self.json(status, {"error": {"code": str(code), "message": message}})


def query_of(scope: Scope) -> dict[str, str]:
    """The request's query parameters, decoded.

    Raises:
        UrlRefused: not a valid query, or a parameter given twice.
    """
    try:
        raw = bytes(scope.get("query_string", b"")).decode("ascii")
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=True, errors="strict")
    except ValueError:
        raise UrlRefused("not a signed object URL") from None
    query = dict(pairs)
    if len(query) != len(pairs):
        raise UrlRefused("a parameter of the URL is repeated")
    return query


def headers_of(scope: Scope) -> dict[str, str]:
    """The request's header fields by lowercase name."""
    found: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        found[bytes(name).decode("latin-1").lower()] = bytes(value).decode("latin-1")
    return found


def content_length(headers: dict[str, str]) -> int:
    """The request's `Content-Length`.

    Raises:
        HttpRefusal: 411 without one (a chunked upload), 400 for one that is no number.
    """
    text = headers.get("content-length")
    if text is None:
        raise HttpRefusal(411, ErrorCode.INVALID_REQUEST, "an upload sends its Content-Length")
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise HttpRefusal(400, ErrorCode.INVALID_REQUEST, "Content-Length is not a number")
    return int(text)


class Unsatisfiable(Exception):
    """The range starts past the object's end."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end) of a single `bytes=` range, or None to send it all (no range, several,
    or one this route does not parse: RFC 9110 lets a server ignore it).

    Raises:
        Unsatisfiable: the range starts past the end.
    """
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(size - suffix, 0), size
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable
    return start, end


async def slice_of(body: Body, start: int, end: int) -> AsyncIterator[bytes]:
    """The bytes of `body` from `start` to `end` (what comes before is read and dropped)."""
    position = 0
    async for chunk in body:
        low, high = max(start - position, 0), min(end - position, len(chunk))
        position += len(chunk)
        if low < high:
            yield chunk[low:high]
        if position >= end:
            return


async def disconnected(receive: Receive) -> None:
    """Return when the client has left."""
    while (await receive())["type"] != "http.disconnect":
        pass
