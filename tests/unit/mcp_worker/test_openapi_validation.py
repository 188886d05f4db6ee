"""Responses checked against the spec (openapi-core): the inventory API through `ApiCaller`
under each policy, and `ResponseValidation` on responses built by hand for what the inventory
cannot answer (3.0, `4XX`, `default`, headers, cut bodies)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest

from ferryman.contracts import FerrymanError
from mcp_worker.openapi import api_tools, load_spec
from mcp_worker.openapi.auth import ApiAuth, SchemeSecret
from mcp_worker.openapi.caller import (
    VALIDATE_INLINE_BYTES,
    WARN_INTERVAL,
    WARN_SAMPLE_INTERVAL,
    ApiCaller,
    ResponseValidationMode,
)
from mcp_worker.openapi.operations import OperationTool
from mcp_worker.openapi.spec import ApiSpec
from mcp_worker.openapi.validation import ResponseValidation
from tests.fakes.openapi_api import DOCUMENTS, InventoryApi
from tests.unit.mcp_worker.conftest import INVENTORY_SCHEMES, INVENTORY_TOOLS, INVENTORY_V1

INVENTORY_V2 = load_spec((DOCUMENTS / "api-v2.json").read_bytes(), source="api-v2.json")
V1_VALIDATION = ResponseValidation(INVENTORY_V1)
SECRETS = {
    "oauth": SchemeSecret(client_id="client-1", client_secret="client-secret-1"),
    "apiKeyHeader": SchemeSecret(value="a-wrong-key"),
}


class Invalid:
    """An `on_invalid` hook that records what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, tool: str, problems: list[str]) -> None:
        self.calls.append((tool, problems))


class CountingValidation(ResponseValidation):
    """Counts the responses it is asked about."""

    def __init__(self, spec: ApiSpec) -> None:
        super().__init__(spec)
        self.checked = 0

    def problems(self, *args: Any, **kwargs: Any) -> list[str]:
        self.checked += 1
        return super().problems(*args, **kwargs)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient() as http:
        yield http


def _caller(
    base_url: str,
    client: httpx2.AsyncClient,
    mode: ResponseValidationMode,
    *,
    validation: ResponseValidation | None = V1_VALIDATION,
    tools: dict[str, OperationTool] = INVENTORY_TOOLS,
    on_invalid: Invalid | None = None,
    clock: Clock | None = None,
    max_bytes: int = 10_000,
) -> ApiCaller:
    auth = ApiAuth("inv", INVENTORY_SCHEMES, SECRETS, base_url=base_url, client=client)
    return ApiCaller(
        "inv", tools, base_url=base_url, auth=auth, client=client, max_bytes=max_bytes,
        retries=0, response_validation=mode, validation=validation, on_invalid=on_invalid,
        clock=clock or Clock(),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("tool", "arguments", "status"),
    [
        ("getItem", {"itemId": "1"}, 200),  # allOf + unevaluatedProperties: false
        ("getTree", {}, 200),  # a cyclic $ref schema
        ("getItem", {"itemId": "404"}, 404),  # a declared problem+json with a declared header
        ("deleteItem", {"itemId": "2"}, 204),  # no body, none declared
        ("listItems", {"tag": ["tools"]}, 200),
        ("getText", {}, 200),
        ("getBinary", {}, 200),
        ("getWithHeaderKey", {}, 403),
        ("getWithOAuth", {}, 200),
    ],
)
async def test_responses_as_the_spec_declares_them_have_no_problems(
    api: InventoryApi,
    client: httpx2.AsyncClient,
    tool: str,
    arguments: dict[str, Any],
    status: int,
) -> None:
    invalid = Invalid()

    result = await _caller(api.base_url, client, "strict", on_invalid=invalid).call(
        tool, arguments, timeout=30
    )

    assert result.status == status
    assert invalid.calls == []


async def test_warn_samples_returns_the_result_and_logs_once_a_minute(
    api: InventoryApi, client: httpx2.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    api.default.off_spec = True
    invalid, clock = Invalid(), Clock()
    caller = _caller(api.base_url, client, "warn", on_invalid=invalid, clock=clock)

    with caplog.at_level(logging.WARNING, logger="mcp_worker.openapi.caller"):
        first = await caller.call("getItem", {"itemId": "1"}, timeout=30)
        await caller.call("getItem", {"itemId": "1"}, timeout=30)  # within the sample interval
        clock.now += WARN_SAMPLE_INTERVAL
        await caller.call("getItem", {"itemId": "1"}, timeout=30)  # sampled, not logged
        clock.now += WARN_INTERVAL
        await caller.call("getItem", {"itemId": "1"}, timeout=30)

    assert first.status == 200
    assert first.structured is not None
    assert first.structured["price"] == "12.5 EUR"  # Item is an allOf of objects: unwrapped
    assert [tool for tool, _ in invalid.calls] == ["getItem"] * 3
    problems = invalid.calls[0][1]
    assert "HTTP 200: body.price: expected type 'number', got string" in problems
    assert not any("EUR" in problem for problem in problems)  # values never echoed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "inv/getItem" in warnings[0]
    assert "body.price" in warnings[0]


async def test_strict_fails_the_call_without_retrying_it(
    api: InventoryApi, client: httpx2.AsyncClient
) -> None:
    api.default.off_spec = True
    invalid = Invalid()
    caller = _caller(api.base_url, client, "strict", on_invalid=invalid)

    with pytest.raises(FerrymanError) as failed:
        await caller.call("getItem", {"itemId": "1"}, timeout=30)

    error = failed.value
    assert (error.code, error.retryable, error.status, error.upstream) == (
        "unavailable", False, 200, "inv",
    )  # fmt: skip
    assert "inv/getItem" in error.message
    assert "body.price" in error.message
    assert len(invalid.calls) == 1
    assert api.count("getItem") == 1


async def test_a_large_body_is_checked_whole(api: InventoryApi, client: httpx2.AsyncClient) -> None:
    for n in range(100):
        api.items[f"big{n}"] = {"id": f"big{n}", "name": "x" * 300, "tags": ["bulk"]}
    api.items["big99"]["price"] = -1
    invalid = Invalid()

    caller = _caller(api.base_url, client, "warn", on_invalid=invalid, max_bytes=100_000)

    result = await caller.call("listItems", {"tag": ["bulk"], "limit": 100}, timeout=30)

    assert result.structured is not None
    assert len(result.structured["result"]) == 100
    assert len(result.content[0]["text"]) > VALIDATE_INLINE_BYTES  # checked in a thread
    assert invalid.calls == [("listItems", ["HTTP 200: body[99].price: breaks 'minimum' 0"])]


async def test_off_never_asks_the_validation(api: InventoryApi, client: httpx2.AsyncClient) -> None:
    api.default.off_spec = True
    counting, invalid = CountingValidation(INVENTORY_V1), Invalid()
    caller = _caller(api.base_url, client, "off", validation=counting, on_invalid=invalid)

    result = await caller.call("getItem", {"itemId": "1"}, timeout=30)

    assert result.status == 200
    assert counting.checked == 0
    assert invalid.calls == []


async def test_strict_without_a_validation_is_refused(client: httpx2.AsyncClient) -> None:
    with pytest.raises(ValueError, match="strict"):
        _caller("http://api", client, "strict", validation=None)


async def test_an_undeclared_status_is_a_problem_but_the_error_result_stands(
    api: InventoryApi, client: httpx2.AsyncClient
) -> None:
    api.default.off_spec = True
    invalid = Invalid()

    result = await _caller(api.base_url, client, "warn", on_invalid=invalid).call(
        "getMissing", {}, timeout=30
    )

    assert (result.status, result.is_error) == (410, True)
    assert invalid.calls == [("getMissing", ["HTTP 410 is not declared (declared: 404)"])]


async def test_a_cyclic_schema_is_checked_at_depth(
    api: InventoryApi, client: httpx2.AsyncClient
) -> None:
    api.default.off_spec = True
    invalid = Invalid()

    await _caller(api.base_url, client, "warn", on_invalid=invalid).call("getTree", {}, timeout=30)

    assert invalid.calls == [
        ("getTree", ["HTTP 200: body.children[0].children[1]: 'children' is a required property"])
    ]


async def test_a_server_url_with_a_path_prefix_is_checked_by_the_operation(
    api: InventoryApi, client: httpx2.AsyncClient
) -> None:
    v2_tools = api_tools(INVENTORY_V2).by_name()
    invalid, clock = Invalid(), Clock()
    caller = _caller(
        f"{api.base_url}/v2", client, "warn", validation=ResponseValidation(INVENTORY_V2),
        tools=v2_tools, on_invalid=invalid, clock=clock,
    )  # fmt: skip

    valid = await caller.call("getItem", {"itemId": "2"}, timeout=30)
    api.default.off_spec = True
    clock.now += WARN_SAMPLE_INTERVAL
    await caller.call("getItem", {"itemId": "2"}, timeout=30)

    assert valid.status == 200
    assert api.requests_to("getItem")[0].raw_path == "/v2/items/2"
    assert len(invalid.calls) == 1
    assert any("body.price" in problem for problem in invalid.calls[0][1])


# ResponseValidation on responses built by hand: a 3.0 document behind a gateway's base URL.

LEGACY = load_spec(
    json.dumps({
        "openapi": "3.0.3",
        "info": {"title": "Things", "version": "1"},
        "servers": [{"url": "https://things.example/api/v1"}],
        "paths": {"/things/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "get": {"operationId": "getThing", "responses": {
                "200": {"description": "ok",
                        "headers": {"X-Rate": {"required": True, "schema": {"type": "integer"}}},
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Thing"}}}},
                "4XX": {"description": "client error", "content": {"application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/Problem"}}}},
                "default": {"description": "other", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["code"]}}}},
            }},
            "head": {"operationId": "headThing", "responses": {
                "200": {"description": "ok", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Thing"}}}}}},
        },
        "/any": {"get": {"operationId": "getAny", "responses": {  # as springdoc declares
            "200": {"description": "ok", "content": {"*/*": {
                "schema": {"$ref": "#/components/schemas/Thing"}}}}}}},
        },
        "components": {"schemas": {
            "Thing": {"type": "object", "required": ["id", "name"], "properties": {
                "id": {"type": "string", "readOnly": True},
                "name": {"type": "string"},
                "note": {"type": "string", "nullable": True},
                "size": {"type": "integer", "minimum": 0}}},
            "Problem": {"type": "object", "required": ["title"],
                        "properties": {"title": {"type": "string"}}},
        }},
    }).encode(),
    source="things-3.0.json",
)  # fmt: skip
LEGACY_TOOLS = api_tools(LEGACY).by_name()
LEGACY_VALIDATION = ResponseValidation(LEGACY)
THING = json.dumps({"id": "1", "name": "bolt", "note": None, "size": 3}).encode()
JSON = {"content-type": "application/json"}
PROBLEM = {"content-type": "application/problem+json"}
RATED = {**JSON, "X-Rate": "5"}


def _problems(
    status: int,
    headers: dict[str, str],
    body: bytes,
    *,
    tool: str = "getThing",
    body_complete: bool = True,
) -> list[str]:
    method = LEGACY_TOOLS[tool].method
    # Not the spec's server: a gateway's base URL with a path of its own.
    request = httpx2.Request(method, "https://gateway.example/teams/7/things/1")
    response = httpx2.Response(status, headers=headers, content=body, request=request)
    return LEGACY_VALIDATION.problems(
        LEGACY_TOOLS[tool], request, response, body_complete=body_complete
    )


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        (200, RATED, THING),  # nullable note, readOnly id in a response
        (404, PROBLEM, b'{"title": "Not Found"}'),  # by the 4XX range
        (503, JSON, b'{"code": 7}'),  # by default
    ],
)
def test_a_3_0_response_matching_its_status_range_or_default_has_no_problems(
    status: int, headers: dict[str, str], body: bytes
) -> None:
    assert _problems(status, headers, body) == []


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (200, JSON, THING, "HTTP 200: required header 'X-Rate' is missing"),
        (404, PROBLEM, b"{}", "HTTP 404: body: 'title' is a required property"),
        (503, JSON, b"{}", "HTTP 503: body: 'code' is a required property"),
        (200, {"content-type": "text/plain", "X-Rate": "5"}, b"bolt",
         "HTTP 200: media type 'text/plain' is not declared (declared: application/json)"),
        (200, RATED, b"", "HTTP 200: the body is empty but the spec declares content"),
        (200, RATED, b'{"id": "1", "na', "HTTP 200: the body is not valid application/json"),
        (200, RATED, b'{"id": "1", "name": "x", "size": -4}',
         "HTTP 200: body.size: breaks 'minimum' 0"),
    ],
)  # fmt: skip
def test_a_3_0_response_off_the_spec_is_described(
    status: int, headers: dict[str, str], body: bytes, expected: str
) -> None:
    assert _problems(status, headers, body) == [expected]


def test_a_header_is_named_but_its_value_never_told() -> None:
    problems = _problems(200, {**JSON, "X-Rate": "sk-live-secret"}, THING)

    assert problems == ["HTTP 200: header 'X-Rate' does not match its schema"]


def test_a_body_cut_at_the_size_limit_is_checked_for_status_and_media_type_only() -> None:
    cut = b'{"id": "1", "na'

    assert _problems(200, RATED, cut, body_complete=False) == []
    assert _problems(418, {"content-type": "text/html"}, cut, body_complete=False) == [
        "HTTP 418: media type 'text/html' is not declared (declared: application/problem+json)"
    ]


def test_a_head_response_needs_no_body() -> None:
    assert _problems(200, JSON, b"", tool="headThing") == []


def test_a_media_range_reads_a_json_body_as_json() -> None:
    text = {"content-type": "text/plain"}

    assert _problems(200, JSON, THING, tool="getAny") == []
    assert _problems(200, JSON, b'{"id": "1"}', tool="getAny") == [
        "HTTP 200: body: 'name' is a required property"
    ]
    assert _problems(200, text, b"bolt", tool="getAny") == [
        "HTTP 200: body: expected type 'object', got string"
    ]


def test_many_problems_are_capped_and_never_echo_values() -> None:
    tool = INVENTORY_TOOLS["listItems"]
    request = httpx2.Request("GET", "http://127.0.0.1:1/items")
    body = json.dumps([{"name": "x" * 500, "price": "p" * 500}] * 12).encode()
    response = httpx2.Response(200, headers=JSON, content=body, request=request)

    problems = V1_VALIDATION.problems(tool, request, response)

    assert len(problems) == 5
    assert problems[0] == "HTTP 200: body[0].price: expected type 'number', got string"
    assert problems[3] == "HTTP 200: body[3].price: expected type 'number', got string"
    assert problems[4] == "and 8 more problems"
    assert "xxxx" not in " ".join(problems)
    assert "pppp" not in " ".join(problems)


def test_problem_json_of_a_3_1_spec_is_read_as_json() -> None:
    tool = INVENTORY_TOOLS["getItem"]
    request = httpx2.Request("GET", "http://127.0.0.1:1/items/9")
    body = b'{"title": "Not Found", "status": "404"}'
    response = httpx2.Response(404, headers=PROBLEM, content=body, request=request)

    problems = V1_VALIDATION.problems(tool, request, response)

    assert problems == ["HTTP 404: body.status: expected type 'integer', got string"]


def test_an_unexpected_property_is_named() -> None:
    tool = INVENTORY_TOOLS["getItem"]
    request = httpx2.Request("GET", "http://127.0.0.1:1/items/1")
    body = b'{"id": "1", "name": "saw", "colour": "red"}'
    response = httpx2.Response(200, headers=JSON, content=body, request=request)

    assert V1_VALIDATION.problems(tool, request, response) == [
        "HTTP 200: body: Unevaluated properties are not allowed ('colour' was unexpected)"
    ]


def test_a_response_the_checker_cannot_read_is_a_problem_not_a_crash() -> None:
    # openapi-core cannot parse a media type parameter without a value.
    problems = _problems(200, {"content-type": "application/json; utf8", "X-Rate": "5"}, THING)

    assert problems == ["HTTP 200: the response could not be checked (ValueError)"]
