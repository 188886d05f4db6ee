"""Tool calls of an OpenAPI operation as HTTP requests, sent to the inventory API: arguments
land where the spec says, and no argument can change the path that is called."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from mcp_worker.openapi import OperationTool
from mcp_worker.openapi.http_request import UnsupportedParameter, build_request
from mcp_worker.openapi.operations import Binding
from tests.fakes.openapi_api import InventoryApi
from tests.unit.mcp_worker.conftest import INVENTORY_TOOLS


@pytest.fixture
def tools() -> dict[str, OperationTool]:
    return INVENTORY_TOOLS


async def _send(api: InventoryApi, request: httpx2.Request) -> httpx2.Response:
    async with httpx2.AsyncClient() as client:
        return await client.send(request)


@pytest.mark.parametrize(
    ("item_id", "raw"),
    [
        ("../admin", "/items/..%2Fadmin"),
        ("..", "/items/%2E%2E"),
        ("a/b?c#d", "/items/a%2Fb%3Fc%23d"),
    ],
)
async def test_a_path_parameter_never_changes_the_path(
    api: InventoryApi, tools: dict[str, OperationTool], item_id: str, raw: str
) -> None:
    request = build_request(tools["getItem"], {"itemId": item_id}, api.base_url)

    response = await _send(api, request)

    assert response.status_code == 404  # no such item, and no other route reached
    assert [r.raw_path for r in api.requests] == [raw]
    assert api.count("adminTrap") == 0


async def test_query_arrays_explode_and_a_json_body_is_sent(
    api: InventoryApi, tools: dict[str, OperationTool]
) -> None:
    listed = await _send(
        api, build_request(tools["listItems"], {"limit": 5, "tag": ["a", "b"]}, api.base_url)
    )
    created = await _send(
        api,
        build_request(tools["createItem"], {"body": {"name": "lamp", "tags": ["x"]}}, api.base_url),
    )

    assert listed.status_code == 200
    assert api.requests[0].query == [("limit", "5"), ("tag", "a"), ("tag", "b")]
    assert created.status_code == 201
    assert created.json()["name"] == "lamp"


def test_header_cookie_and_object_serializations() -> None:
    tool = OperationTool(
        name="t",
        description="",
        method="get",
        path="/x",
        input_schema={"type": "object"},
        output_schema=None,
        bindings={
            "h": Binding("header", "X-Ids"),
            "c": Binding("cookie", "session"),
            "deep": Binding("query", "filter", style="deepObject", explode=True),
            "flat": Binding("query", "ids", style="form", explode=False),
            "pipes": Binding("query", "p", style="pipeDelimited", explode=False),
            "on": Binding("query", "on"),
        },
        read_only=True,
        idempotent=True,
    )
    arguments: dict[str, Any] = {
        "h": [1, 2],
        "c": "a b;c",
        "deep": {"kind": "lamp", "max": 3},
        "flat": [1, 2],
        "pipes": ["a", "b"],
        "on": True,
    }

    request = build_request(tool, arguments, "http://127.0.0.1:1/base/")

    assert str(request.url) == (
        "http://127.0.0.1:1/base/x?filter%5Bkind%5D=lamp&filter%5Bmax%5D=3&ids=1%2C2&p=a%7Cb&on=true"
    )
    assert request.headers["X-Ids"] == "1,2"
    assert request.headers["Cookie"] == "session=a%20b%3Bc"


def test_a_style_not_implemented_is_refused_clearly() -> None:
    tool = OperationTool(
        name="t",
        description="",
        method="get",
        path="/x/{id}",
        input_schema={"type": "object"},
        output_schema=None,
        bindings={"id": Binding("path", "id", style="matrix")},
        read_only=True,
        idempotent=True,
    )

    with pytest.raises(UnsupportedParameter, match="'id': style 'matrix'"):
        build_request(tool, {"id": 1}, "http://127.0.0.1:1")


def _tool(bindings: dict[str, Binding], method: str = "GET", path: str = "/x") -> OperationTool:
    return OperationTool(
        name="t",
        description="",
        method=method,
        path=path,
        input_schema={"type": "object"},
        output_schema=None,
        bindings=bindings,
        read_only=method == "GET",
        idempotent=method != "POST",
    )


def test_an_empty_path_parameter_is_refused() -> None:
    tool = _tool({"id": Binding("path", "id")}, method="DELETE", path="/items/{id}")

    with pytest.raises(UnsupportedParameter, match="'id' must not be empty"):
        build_request(tool, {"id": ""}, "http://127.0.0.1:1")


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "caf\u00e9", "tab\there"])
def test_a_header_value_that_could_break_the_request_is_refused(value: str) -> None:
    tool = _tool({"account": Binding("header", "X-Account")})

    with pytest.raises(UnsupportedParameter, match="'X-Account' must be printable ASCII"):
        build_request(tool, {"account": value}, "http://127.0.0.1:1")


def test_a_json_variant_body_keeps_its_media_type() -> None:
    tool = _tool(
        {"body": Binding("body", "body", content_type="application/merge-patch+json")},
        method="PATCH",
    )

    request = build_request(tool, {"body": {"name": "café"}}, "http://127.0.0.1:1")

    assert request.headers["Content-Type"] == "application/merge-patch+json"
    assert request.content == '{"name": "café"}'.encode()


def test_a_content_encoded_parameter_is_sent_as_json() -> None:
    tool = _tool(
        {
            "filter": Binding("query", "filter", content_type="application/json"),
            "ctx": Binding("header", "X-Context", content_type="application/json"),
        }
    )

    request = build_request(
        tool, {"filter": {"kind": "lamp", "max": 3}, "ctx": [1, 2]}, "http://127.0.0.1:1"
    )

    assert request.url.params["filter"] == '{"kind":"lamp","max":3}'
    assert request.headers["X-Context"] == "[1,2]"
