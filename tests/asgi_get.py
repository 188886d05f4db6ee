"""`GET` a path of an ASGI app in-process (a worker's host app: `/metrics`, `/health`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

AsgiApp = Callable[..., Awaitable[None]]


async def asgi_get(app: AsgiApp, path: str) -> str:
    """The body of `GET path` on `app`, which must answer 200."""
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "headers": [],
        "query_string": b"",
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 200
    return b"".join(m["body"] for m in sent if m["type"] == "http.response.body").decode()
