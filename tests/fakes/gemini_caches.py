"""The `cachedContents` resource of the fake Gemini server (explicit context caching).

Routes, only under the API versions that have the resource (`v1beta`, `v1alpha`; `v1`
answers 404 as Google does):

- `POST /{v}/cachedContents` — create: `model` (`models/…`), `contents`,
  `systemInstruction`, `tools`, `toolConfig`, `ttl` (`"300s"`) or `expireTime`,
  `displayName`; any other key is a 400, as are both `ttl` and `expireTime`. A content
  counted below `min_tokens` is refused with Gemini's 400 "Cached content is too small".
- `GET /{v}/cachedContents/{id}`, `PATCH` (`ttl` or `expireTime`; `updateMask` when given
  must name only those) and `DELETE`.

Expiry runs on `clock` (seconds; default the event loop's, so virtual time works), and
`expireTime` is `epoch` plus the clock. An expired, deleted or unknown cached content, or
one created with another API key, is answered like Gemini does: 403 PERMISSION_DENIED
"CachedContent not found (or permission denied)" (`missing_status` changes the status).

`check_generate` validates a generate call naming `cachedContent`: the cached content is
alive and belongs to the caller's key, the model is the same, and the call carries no
`systemInstruction`, `tools` or `toolConfig`. It returns the cached token count.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

CACHE_VERSIONS = frozenset({"v1beta", "v1alpha"})
PATH = re.compile(r"^/(?P<version>[^/]+)/cachedContents(?:/(?P<id>[^/:]+))?$")

_CREATE_KEYS = frozenset(
    {"model", "contents", "systemInstruction", "tools", "toolConfig", "ttl", "expireTime",
     "displayName"}
)  # fmt: skip
_TTL = re.compile(r"^(\d+(?:\.\d{1,9})?)s$")
_NOT_FOUND = "CachedContent not found (or permission denied)"
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class CachedContent:
    """One cached content the fake holds."""

    name: str
    model: str
    display_name: str | None
    body: dict[str, Any]
    tokens: int
    api_key: str | None
    created_at: float
    expire_at: float
    updated_at: float
    deleted: bool = False


class CachedContents:
    """The fake's cached contents, with a settable clock."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock
        self.min_tokens = 0
        """Refuse a create whose counted tokens are fewer (Gemini's per-model minimum)."""
        self.missing_status = 403
        self.create_status: int | None = None
        """Answer every create with this HTTP error status instead."""
        self.hold: dict[str, asyncio.Event] = {}
        """HTTP method → an event requests of that method wait for before being answered
        (a slow `cachedContents` API; the test sets the event to release them)."""
        self.deleted = asyncio.Event()
        """Set by every DELETE of a live cached content (for tests that wait on one)."""
        self.items: dict[str, CachedContent] = {}
        self._ids = itertools.count(1)

    def now(self) -> float:
        """The fake's time, in seconds."""
        return self.clock() if self.clock else asyncio.get_running_loop().time()

    def alive(self) -> list[CachedContent]:
        """Cached contents neither deleted nor expired."""
        now = self.now()
        return [c for c in self.items.values() if not c.deleted and c.expire_at > now]

    async def answer(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        """Answer a `cachedContents` request (the caller matched `PATH`), once `hold`'s event
        for its method, if any, is set."""
        held = self.hold.get(request.method)
        if held is not None:
            await held.wait()
        return self.handle(request, body)

    def handle(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        """Answer a `cachedContents` request (the caller matched `PATH`)."""
        match = PATH.match(request.path)
        assert match is not None
        if match["version"] not in CACHE_VERSIONS:
            return error(404, "NOT_FOUND", f"no route for {request.path} on {match['version']}")
        key = request.headers.get("x-goog-api-key")
        ident = match["id"]
        if ident is None:
            if request.method != "POST":
                return error(405, "METHOD_NOT_ALLOWED", "only POST on the collection")
            return self._create(body, key)
        item = self.items.get(f"cachedContents/{ident}")
        if item is None or item.deleted or item.expire_at <= self.now() or item.api_key != key:
            return error(self.missing_status, _status_name(self.missing_status), _NOT_FOUND)
        if request.method == "GET":
            return web.json_response(self._resource(item))
        if request.method == "PATCH":
            return self._update(item, body, request.query.get("updateMask"))
        if request.method == "DELETE":
            item.deleted = True
            self.deleted.set()
            return web.json_response({})
        return error(405, "METHOD_NOT_ALLOWED", f"{request.method} on a cached content")

    def check_generate(
        self, body: dict[str, Any], model: str, api_key: str | None
    ) -> tuple[int, web.Response | None]:
        """`(cached tokens, None)` for a valid use of `body["cachedContent"]`, else
        `(0, error response)`."""
        mixed = sorted({"systemInstruction", "tools", "toolConfig"} & body.keys())
        if mixed:
            return 0, error(
                400,
                "INVALID_ARGUMENT",
                "CachedContent can not be used with GenerateContent request setting"
                f" system_instruction, tools or tool_config (got {', '.join(mixed)}).",
            )
        item = self.items.get(str(body["cachedContent"]))
        now = self.now()
        if item is None or item.deleted or item.expire_at <= now or item.api_key != api_key:
            return 0, error(self.missing_status, _status_name(self.missing_status), _NOT_FOUND)
        if item.model != f"models/{model}":
            return 0, error(
                400,
                "INVALID_ARGUMENT",
                f"Model used by GenerateContent request (models/{model}) and CachedContent"
                f" ({item.model}) has to be the same.",
            )
        return item.tokens, None

    def _create(self, body: dict[str, Any], api_key: str | None) -> web.Response:
        if self.create_status is not None:
            status = self.create_status
            return error(status, _status_name(status), f"fake create failure {status}")
        unknown = sorted(body.keys() - _CREATE_KEYS)
        if unknown:
            return error(
                400, "INVALID_ARGUMENT", f'Invalid JSON payload: unknown name "{unknown[0]}"'
            )
        model = body.get("model")
        if not isinstance(model, str) or not model.startswith("models/"):
            return error(400, "INVALID_ARGUMENT", f"model must be models/<id>, got {model!r}")
        if "ttl" in body and "expireTime" in body:
            return error(400, "INVALID_ARGUMENT", "set either ttl or expireTime, not both")
        now = self.now()
        expire_at = self._expiry(body, now)
        if expire_at is None:
            return error(400, "INVALID_ARGUMENT", f"bad ttl {body.get('ttl')!r}")
        tokens = count_tokens(body)
        if tokens < self.min_tokens:
            return error(
                400,
                "INVALID_ARGUMENT",
                f"Cached content is too small. total_token_count={tokens},"
                f" min_total_token_count={self.min_tokens}",
            )
        name = f"cachedContents/fake-{next(self._ids)}"
        item = CachedContent(
            name, model, body.get("displayName"), body, tokens, api_key, now, expire_at, now
        )
        self.items[name] = item
        return web.json_response(self._resource(item))

    def _update(self, item: CachedContent, body: dict[str, Any], mask: str | None) -> web.Response:
        fields = set(body)
        if not fields or fields - {"ttl", "expireTime"} or len(fields) > 1:
            return error(400, "INVALID_ARGUMENT", f"only ttl or expireTime can be updated: {body}")
        if mask is not None and set(mask.split(",")) - {"ttl", "expireTime", "expire_time"}:
            return error(400, "INVALID_ARGUMENT", f"bad updateMask {mask!r}")
        now = self.now()
        expire_at = self._expiry(body, now)
        if expire_at is None:
            return error(400, "INVALID_ARGUMENT", f"bad ttl {body.get('ttl')!r}")
        item.expire_at, item.updated_at = expire_at, now
        return web.json_response(self._resource(item))

    def _expiry(self, body: dict[str, Any], now: float) -> float | None:
        if "expireTime" in body:
            when = datetime.fromisoformat(str(body["expireTime"]).replace("Z", "+00:00"))
            return (when - _EPOCH).total_seconds()
        match = _TTL.match(str(body.get("ttl", "3600s")))  # Gemini's default ttl: 1 h
        return now + float(match.group(1)) if match else None

    def _resource(self, item: CachedContent) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "name": item.name,
            "model": item.model,
            "createTime": timestamp(item.created_at),
            "updateTime": timestamp(item.updated_at),
            "expireTime": timestamp(item.expire_at),
            "usageMetadata": {"totalTokenCount": item.tokens},
        }
        if item.display_name is not None:
            resource["displayName"] = item.display_name
        return resource


def count_tokens(body: dict[str, Any]) -> int:
    """The fake's token count of a cached content: words of every text, plus words of the
    tool declarations' JSON."""
    texts = [
        str(part.get("text", ""))
        for content in [*body.get("contents", []), body.get("systemInstruction") or {}]
        for part in content.get("parts", [])
    ]
    words = sum(len(text.split()) for text in texts)
    if tools := body.get("tools"):
        words += len(json.dumps(tools).split())
    return words


def timestamp(seconds: float) -> str:
    """RFC 3339 UTC time of fake time `seconds`."""
    return (_EPOCH + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def error(status: int, name: str, message: str) -> web.Response:
    """Gemini's error body."""
    return web.json_response(
        {"error": {"code": status, "message": message, "status": name}}, status=status
    )


def _status_name(status: int) -> str:
    names = {403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED"}
    return names.get(status, "UNAVAILABLE" if status >= 500 else "FAILED_PRECONDITION")
