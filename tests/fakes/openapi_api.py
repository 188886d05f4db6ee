"""A local HTTP API ("inventory") described by `tests/fakes/openapi/api-v1.json` and `api-v2.json`.

The issue-11 tests turn these documents into tools and call this server through them.
Version 1 is served at the root, version 2 under the `/v2` prefix (same server, same
state); each document's `servers` entry points at its prefix. The documents are also
served at `GET /openapi/v1.json` and `GET /openapi/v2.json` (for "spec by URL").

Routing matches the RAW request path (percent-encoding kept), so `/items/..%2Fadmin` is
the item `../admin`, never the route `/admin`; `getItem` echoes the raw path in the
`X-Raw-Path` header and, on a 404, in the problem's `instance`. `GET /admin` exists only
as a trap: a client that let `../` through hits it, and `count("adminTrap")` shows it.

Every request is recorded in `requests` (`RecordedRequest`), and counted per operationId
in `counts` (`count(operation_id)`); `tokens_issued` counts OAuth2 access tokens.
Run standalone: `python -m tests.fakes.openapi_api --port 0` (prints the port).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

from aiohttp import web

from tests.fakes.http_fake import FakeHttpServer

DOCUMENTS = Path(__file__).parent / "openapi"
"""The directory holding `api-v1.json` and `api-v2.json`."""


@dataclass
class ApiOptions:
    """The server's secrets and behaviour knobs (the fake's "scenario")."""

    api_key: str = "key-123"
    """Accepted in `X-Api-Key`, in `?api_key=` and in the `session` cookie."""
    bearer_token: str = "bearer-123"
    basic_user: str = "alice"
    basic_password: str = "wonderland"
    client_id: str = "client-1"
    client_secret: str = "client-secret-1"
    token_ttl: int = 300
    """Seconds an OAuth2 access token lives (`expires_in`)."""
    limited_failures: int = 2
    """`GET /limited` answers 429 (`Retry-After: 1`) for this many calls, then 200."""
    flaky_failures: int = 2
    """`GET /flaky` answers 503 for this many calls, then 200."""
    off_spec: bool = False
    """Answers outside the documents (for response validation): `getItem` gives `price` as
    text, `getTree` a grandchild without `children`, `getMissing` HTTP 410 (undeclared)."""


@dataclass
class RecordedRequest:
    """One request as the server received it."""

    method: str
    raw_path: str
    """The path exactly as sent, percent-encoding kept, without the query."""
    query: list[tuple[str, str]]
    """Decoded query pairs in order (a repeated `tag` appears once per value)."""
    headers: dict[str, str]
    body: str
    version: int
    operation: str | None = None
    """The operationId that handled it (None when no route matched)."""
    status: int | None = None


Handler = Callable[["Call"], Awaitable[web.StreamResponse]]


@dataclass
class Call:
    """What a handler gets: the request, its version, path parameters and query."""

    request: web.Request
    version: int
    params: dict[str, str]
    query: list[tuple[str, str]]
    raw_path: str

    def first(self, name: str) -> str | None:
        return next((v for k, v in self.query if k == name), None)


def problem(status: int, title: str, detail: str = "", **extra: Any) -> web.Response:
    """An RFC 9457 problem response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return web.json_response(body, status=status, content_type="application/problem+json")


class InventoryApi(FakeHttpServer):
    """The inventory API fake.

    Args:
        default: secrets and behaviour (`ApiOptions`); `POST /_scenarios {"*": {...}}`
            replaces them at run time.
        clock: seconds, monotonic; token expiry reads it (inject one to expire tokens
            without waiting).
    """

    scenario_type = ApiOptions

    def __init__(
        self, default: ApiOptions | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(default)
        self.default: ApiOptions
        self.requests: list[RecordedRequest]
        self.clock = clock
        self.counts: collections.Counter[str] = collections.Counter()
        self.tokens_issued = 0
        self.tokens: dict[str, float] = {}
        """Access token → expiry time on `clock`."""
        self.items: dict[str, dict[str, Any]] = {
            "1": {"id": "1", "name": "hammer", "price": 12.5, "tags": ["tools", "steel"],
                  "description": "A claw hammer"},
            "2": {"id": "2", "name": "saw", "price": 20.0, "tags": ["tools"]},
        }  # fmt: skip
        self._next_id = 3
        self._routes: list[tuple[str, tuple[str, ...], str, Handler]] = []
        for method, pattern, operation, handler in [
            ("GET", "/items", "listItems", self._list_items),
            ("POST", "/items", "createItem", self._create_item),
            ("GET", "/items/{itemId}", "getItem", self._get_item),
            ("PUT", "/items/{itemId}", "replaceItem", self._replace_item),
            ("DELETE", "/items/{itemId}", "deleteItem", self._delete_item),
            ("GET", "/tree", "getTree", self._tree),
            ("GET", "/auth/header", "getWithHeaderKey", self._auth_header),
            ("GET", "/auth/query", "getWithQueryKey", self._auth_query),
            ("GET", "/auth/cookie", "getWithCookie", self._auth_cookie),
            ("GET", "/auth/bearer", "getWithBearer", self._auth_bearer),
            ("GET", "/auth/basic", "getWithBasic", self._auth_basic),
            ("GET", "/auth/oauth", "getWithOAuth", self._auth_oauth),
            ("POST", "/oauth/token", "issueToken", self._issue_token),
            ("GET", "/limited", "getLimited", self._limited),
            ("GET", "/cached", "getCached", self._cached),
            ("GET", "/uncached", "getUncached", self._uncached),
            ("GET", "/slow", "getSlow", self._slow),
            ("GET", "/flaky", "getFlaky", self._flaky),
            ("GET", "/binary", "getBinary", self._binary),
            ("GET", "/text", "getText", self._text),
            ("GET", "/errors/not-found", "getMissing", self._missing),
            ("GET", "/health", "getHealth", self._health),
            ("GET", "/admin", "adminTrap", self._admin_trap),
        ]:
            self._routes.append((method, tuple(pattern.split("/")[1:]), operation, handler))

    @property
    def options(self) -> ApiOptions:
        """The current secrets and knobs."""
        return self.default

    @property
    def base_url(self) -> str:
        """Version 1's base URL (version 2 is this plus `/v2`)."""
        return f"http://127.0.0.1:{self.port}"

    def count(self, operation_id: str) -> int:
        """How many requests reached `operation_id` (every status, 304s included)."""
        return self.counts[operation_id]

    def requests_to(self, operation_id: str) -> list[RecordedRequest]:
        """The recorded requests handled by `operation_id`, in order."""
        return [r for r in self.requests if r.operation == operation_id]

    def expire_tokens(self) -> None:
        """Make every access token issued so far expired (a 401 on its next use)."""
        for token in self.tokens:
            self.tokens[token] = float("-inf")

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw_path, _, raw_query = request.raw_path.partition("?")
        record = RecordedRequest(
            method=request.method,
            raw_path=raw_path,
            query=parse_qsl(raw_query, keep_blank_values=True),
            headers=dict(request.headers),
            body=(await request.read()).decode("utf-8", "replace"),
            version=1,
        )
        self.requests.append(record)
        response = await self._route(request, record)
        record.status = response.status
        return response

    async def _route(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        segments = record.raw_path.split("/")[1:]
        if record.raw_path.startswith("/openapi/") and request.method == "GET":
            return self._document(segments[-1])
        if segments[:1] == ["v2"]:
            record.version, segments = 2, segments[1:] or [""]
        methods_allowed = False
        for method, pattern, operation, handler in self._routes:
            params = _match(pattern, segments)
            if params is None or not _exists(operation, record.version):
                continue
            if method != request.method:
                methods_allowed = True
                continue
            record.operation = operation
            self.counts[operation] += 1
            call = Call(request, record.version, params, record.query, record.raw_path)
            return await handler(call)
        if methods_allowed:
            return problem(405, "Method Not Allowed", f"{request.method} {record.raw_path}")
        return problem(404, "Not Found", "no such route", instance=record.raw_path)

    def _document(self, name: str) -> web.StreamResponse:
        files = {"v1.json": "api-v1.json", "v2.json": "api-v2.json"}
        if name not in files:
            return problem(404, "Not Found", "no such document")
        text = (DOCUMENTS / files[name]).read_text()
        return web.Response(text=text, content_type="application/json")

    # items

    def _view(self, item: dict[str, Any], version: int) -> dict[str, Any]:
        return {k: v for k, v in item.items() if not (version == 2 and k == "description")}

    async def _list_items(self, call: Call) -> web.StreamResponse:
        if call.version == 2 and call.first("warehouse") is None:
            return problem(400, "Bad Request", "query parameter 'warehouse' is required")
        limit_text = call.first("limit") or "20"
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
            return problem(400, "Bad Request", "'limit' must be an integer from 1 to 100")
        wanted = {v for k, v in call.query if k == "tag"}
        found = [i for i in self.items.values() if wanted <= set(i.get("tags", []))]
        return web.json_response([self._view(i, call.version) for i in found[: int(limit_text)]])

    async def _item_body(self, call: Call) -> dict[str, Any] | web.Response:
        try:
            body = await call.request.json()
        except json.JSONDecodeError:
            return problem(400, "Bad Request", "the body is not JSON")
        error = _item_error(body, call.version)
        return problem(400, "Bad Request", error) if error else body

    async def _create_item(self, call: Call) -> web.StreamResponse:
        body = await self._item_body(call)
        if isinstance(body, web.Response):
            return body
        item = {**body, "id": str(self._next_id)}
        self._next_id += 1
        self.items[item["id"]] = item
        return web.json_response(self._view(item, call.version), status=201)

    async def _get_item(self, call: Call) -> web.StreamResponse:
        echo = {"X-Raw-Path": call.raw_path}
        item = self.items.get(call.params["itemId"])
        if item is None:
            response = problem(
                404, "Not Found", f"no item {call.params['itemId']!r}", instance=call.raw_path
            )
            response.headers.update(echo)
            return response
        view = self._view(item, call.version)
        if self.options.off_spec:
            view = {**view, "price": f"{view.get('price', 0)} EUR"}
        return web.json_response(view, headers=echo)

    async def _replace_item(self, call: Call) -> web.StreamResponse:
        body = await self._item_body(call)
        if isinstance(body, web.Response):
            return body
        item = {**body, "id": call.params["itemId"]}
        self.items[item["id"]] = item
        return web.json_response(self._view(item, call.version))

    async def _delete_item(self, call: Call) -> web.StreamResponse:
        if self.items.pop(call.params["itemId"], None) is None:
            return problem(404, "Not Found", "no such item", instance=call.raw_path)
        return web.Response(status=204)

    async def _tree(self, call: Call) -> web.StreamResponse:
        def leaf(name: str) -> dict[str, Any]:
            return {"name": name, "children": []}

        saws = {"name": "saws"} if self.options.off_spec else leaf("saws")
        tools = {"name": "tools", "children": [leaf("hammers"), saws]}
        return web.json_response({"name": "root", "children": [tools, leaf("garden")]})

    # auth: missing credentials → 401; a wrong API key → 403; wrong bearer/basic/token → 401

    def _api_key(self, given: str | None, scheme: str) -> web.StreamResponse:
        if given is None:
            return problem(401, "Unauthorized", f"{scheme}: no API key")
        if not secrets.compare_digest(given, self.options.api_key):
            return problem(403, "Forbidden", f"{scheme}: wrong API key")
        return web.json_response({"scheme": scheme, "ok": True})

    async def _auth_header(self, call: Call) -> web.StreamResponse:
        return self._api_key(call.request.headers.get("X-Api-Key"), "apiKeyHeader")

    async def _auth_query(self, call: Call) -> web.StreamResponse:
        return self._api_key(call.first("api_key"), "apiKeyQuery")

    async def _auth_cookie(self, call: Call) -> web.StreamResponse:
        return self._api_key(call.request.cookies.get("session"), "apiKeyCookie")

    def _bearer(self, call: Call) -> str | None:
        scheme, _, token = call.request.headers.get("Authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" and token else None

    async def _auth_bearer(self, call: Call) -> web.StreamResponse:
        token = self._bearer(call)
        if token is None or not secrets.compare_digest(token, self.options.bearer_token):
            return _unauthorized("Bearer", "bearerAuth: missing or wrong token")
        return web.json_response({"scheme": "bearerAuth", "ok": True})

    async def _auth_basic(self, call: Call) -> web.StreamResponse:
        pair = _basic(call.request)
        expected = (self.options.basic_user, self.options.basic_password)
        if pair is None or not secrets.compare_digest(":".join(pair), ":".join(expected)):
            return _unauthorized('Basic realm="inventory"', "basicAuth: missing or wrong")
        return web.json_response({"scheme": "basicAuth", "ok": True})

    async def _auth_oauth(self, call: Call) -> web.StreamResponse:
        token = self._bearer(call)
        expiry = self.tokens.get(token) if token else None
        if expiry is None or expiry <= self.clock():
            return _unauthorized('Bearer error="invalid_token"', "oauth: unknown or expired token")
        return web.json_response({"scheme": "oauth", "ok": True})

    async def _issue_token(self, call: Call) -> web.StreamResponse:
        form = dict(parse_qsl((await call.request.read()).decode(), keep_blank_values=True))
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        pair = _basic(call.request) or (form.get("client_id", ""), form.get("client_secret", ""))
        expected = (self.options.client_id, self.options.client_secret)
        if not secrets.compare_digest(":".join(pair), ":".join(expected)):
            return web.json_response({"error": "invalid_client"}, status=401)
        token = secrets.token_urlsafe(16)
        self.tokens[token] = self.clock() + self.options.token_ttl
        self.tokens_issued += 1
        body = {"access_token": token, "token_type": "Bearer", "expires_in": self.options.token_ttl}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    # behaviour

    async def _limited(self, call: Call) -> web.StreamResponse:
        hit = self.count("getLimited")
        if hit <= self.options.limited_failures:
            response = problem(429, "Too Many Requests", f"call {hit}")
            response.headers["Retry-After"] = "1"
            return response
        return web.json_response({"hit": hit})

    async def _cached(self, call: Call) -> web.StreamResponse:
        headers = {"ETag": '"inventory-v1"', "Cache-Control": "max-age=60"}
        if call.request.headers.get("If-None-Match") == headers["ETag"]:
            return web.Response(status=304, headers=headers)
        return web.json_response({"hit": self.count("getCached")}, headers=headers)

    async def _uncached(self, call: Call) -> web.StreamResponse:
        return web.json_response({"hit": self.count("getUncached")})

    async def _slow(self, call: Call) -> web.StreamResponse:
        try:
            seconds = float(call.first("seconds") or "")
        except ValueError:
            return problem(400, "Bad Request", "'seconds' must be a number")
        if not 0 <= seconds <= 30:
            return problem(400, "Bad Request", "'seconds' must be from 0 to 30")
        await asyncio.sleep(seconds)
        return web.json_response({"slept": seconds})

    async def _flaky(self, call: Call) -> web.StreamResponse:
        hit = self.count("getFlaky")
        if hit <= self.options.flaky_failures:
            return problem(503, "Service Unavailable", f"call {hit}")
        return web.json_response({"hit": hit})

    async def _binary(self, call: Call) -> web.StreamResponse:
        return web.Response(body=bytes(range(256)), content_type="application/octet-stream")

    async def _text(self, call: Call) -> web.StreamResponse:
        return web.Response(text="hello, inventory\n", content_type="text/plain")

    async def _missing(self, call: Call) -> web.StreamResponse:
        if self.options.off_spec:
            return problem(410, "Gone", "this resource is gone", instance=call.raw_path)
        return problem(404, "Not Found", "this resource never exists", instance=call.raw_path)

    async def _health(self, call: Call) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def _admin_trap(self, call: Call) -> web.StreamResponse:
        return web.json_response({"admin": True})


def _match(pattern: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    """Path parameters (percent-decoded) when raw `segments` fit `pattern`, else None."""
    if len(pattern) != len(segments):
        return None
    params: dict[str, str] = {}
    for part, segment in zip(pattern, segments, strict=True):
        if part.startswith("{"):
            if not segment:
                return None
            params[part[1:-1]] = unquote(segment)
        elif part != segment:
            return None
    return params


def _exists(operation: str, version: int) -> bool:
    return not (
        (version == 2 and operation == "deleteItem") or (version == 1 and operation == "getHealth")
    )


_ITEM_FIELDS = {"name", "price", "tags", "description", "dimensions", "id"}


def _item_error(body: Any, version: int) -> str | None:
    """Why `body` is not an `Item` of `version` (the server enforces the schema's closed parts)."""
    if not isinstance(body, dict):
        return "the body must be an object"
    allowed = _ITEM_FIELDS - ({"description"} if version == 2 else set())
    unknown = sorted(set(body) - allowed)  # pyright: ignore[reportUnknownArgumentType]
    if unknown:
        return f"unknown properties: {unknown}"
    if not isinstance(body.get("name"), str) or not body["name"]:
        return "'name' is required and must be a non-empty string"
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, dict) or set(dimensions) != {"width", "height"}  # pyright: ignore[reportUnknownArgumentType]
    ):
        return "'dimensions' needs exactly 'width' and 'height'"
    return None


def _basic(request: web.Request) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _unauthorized(challenge: str, detail: str) -> web.Response:
    response = problem(401, "Unauthorized", detail)
    response.headers["WWW-Authenticate"] = challenge
    return response


def main() -> None:
    """Run the API standalone; prints the bound port on stdout."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--limited-failures", type=int, default=ApiOptions.limited_failures)
    parser.add_argument("--flaky-failures", type=int, default=ApiOptions.flaky_failures)
    parser.add_argument("--token-ttl", type=int, default=ApiOptions.token_ttl)
    args = parser.parse_args()

    async def serve() -> None:
        options = ApiOptions(
            limited_failures=args.limited_failures,
            flaky_failures=args.flaky_failures,
            token_ttl=args.token_ttl,
        )
        api = InventoryApi(options)
        await api.start(args.port)
        print(api.port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
