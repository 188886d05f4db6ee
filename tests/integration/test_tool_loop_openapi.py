"""An OpenAPI-described API's operations as tools of the LLM worker's tool loop: the model
(a provider's fake, scripted) calls them by their function names, the mcp_worker calls the
inventory API (tests/fakes/openapi_api.py), and the results reach the model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ferryman.contracts import ChatCompleted, ToolCallFinished, ToolCallStarted
from tests.fakes.openapi_api import DOCUMENTS, ApiOptions, InventoryApi
from tests.integration.tool_loop_harness import (
    MODEL,
    PROVIDERS,
    ToolLoopStack,
    of_type,
    tool_loop_stack,
    tool_request,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def api_call(name: str, **arguments: Any) -> dict[str, str]:
    """A scripted call of the inventory API's operation `name` (served as `inv@1`)."""
    return {"name": f"inv_1__{name}", "arguments": json.dumps(arguments)}


@pytest.fixture
async def api() -> AsyncIterator[InventoryApi]:
    server = InventoryApi(ApiOptions())
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def stack(
    kafka_bootstrap: str, unique: str, tmp_path: Path, api: InventoryApi
) -> AsyncIterator[ToolLoopStack]:
    servers = {
        "inv@1": {
            "type": "openapi",
            "spec": str(DOCUMENTS / "api-v1.json"),
            "base_url": api.base_url,
            "credentials": {"apiKeyHeader": {"value": "env:INV_TEST_KEY"}},
            "tenants": ["acme"],
        }
    }
    environ = {"INV_TEST_KEY": api.options.api_key}
    async with tool_loop_stack(
        kafka_bootstrap, unique, tmp_path, servers=servers, mcp_overrides={"environ": environ}
    ) as running:
        yield running


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_the_model_calls_api_operations_and_reads_their_results(
    stack: ToolLoopStack, api: InventoryApi, provider: str
) -> None:
    stack.fakes.script(
        provider,
        MODEL,
        tool_steps=[
            [api_call("getItem", itemId="2"), api_call("getWithHeaderKey")],
            [api_call("getItem", itemId="../admin")],
        ],
        echo_tool_results=True,
    )
    request = tool_request(f"{provider}/{MODEL}", servers=["inv@1"])

    events = [event async for event in stack.client.chat_stream(request, timeout=90, tenant="acme")]

    started = of_type(events, ToolCallStarted)
    finished = of_type(events, ToolCallFinished)
    completed = events[-1]
    assert isinstance(completed, ChatCompleted), completed
    assert [(s.server, s.tool) for s in started] == [
        ("inv@1", "getItem"),
        ("inv@1", "getWithHeaderKey"),
        ("inv@1", "getItem"),
    ]
    results = {f.call_id: f for f in finished}
    item, key, traversal = (results[s.call_id] for s in started)
    assert json.loads(item.content)["name"] == "saw"
    assert key.is_error is False
    assert traversal.is_error is True
    assert "HTTP 404" in traversal.content
    assert api.count("adminTrap") == 0
    assert api.requests_to("getWithHeaderKey")[-1].headers["X-Api-Key"] == api.options.api_key
    assert completed.content == "tool results: " + traversal.content
    assert [len(step.tool_calls) for step in completed.steps or []] == [2, 1, 0]
