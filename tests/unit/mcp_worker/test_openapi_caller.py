"""Calling OpenAPI operations as tools, against the inventory API (and, where the API cannot
be made to fail that way, the HTTP client's mock transport)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from ferryman.contracts import FerrymanError
from mcp_worker.openapi.auth import ApiAuth, SchemeSecret
from mcp_worker.openapi.cache import CacheMode, caching_client
from mcp_worker.openapi.caller import ApiCaller
from mcp_worker.openapi.operations import Binding, OperationTool
from tests.fakes.openapi_api import InventoryApi
from tests.unit.mcp_worker.conftest import INVENTORY_SCHEMES, INVENTORY_TOOLS

TOOLS = INVENTORY_TOOLS
SCHEMES = INVENTORY_SCHEMES
SECRETS = {"oauth": SchemeSecret(client_id="client-1", client_secret="client-secret-1")}


class Waits:
    """A `sleep` that records the waits and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
async def client() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient() as http:
        yield http


def _caller(
    api_url: str, client: httpx2.AsyncClient, waits: Waits, *, retries: int = 2
) -> ApiCaller:
    auth = ApiAuth("inv", SCHEMES, SECRETS, base_url=api_url, client=client)
    return ApiCaller(
        "inv", TOOLS, base_url=api_url, auth=auth, client=client, max_bytes=10_000,
        retries=retries, sleep=waits,
    )  # fmt: skip


async def test_a_rate_limit_is_waited_out_as_the_api_asks(
    api: InventoryApi, client: httpx2.AsyncClient
) -> None:
    waits = Waits()

    result = await _caller(api.base_url, client, waits).call("getLimited", {}, timeout=30)

    assert result.status == 200
    assert waits.delays == [1.0, 1.0]  # Retry-After: 1, twice
    assert api.count("getLimited") == 3


async def test_retries_stop_at_their_budget_and_fail_retryable(
    api: InventoryApi, client: httpx2.AsyncClient
) -> None:
    waits = Waits()

    with pytest.raises(FerrymanError) as failed:
        await _caller(api.base_url, client, waits, retries=1).call("getFlaky", {}, timeout=30)

    assert (failed.value.code, failed.value.retryable, failed.value.status) == (
        "unavailable", True, 503,
    )  # fmt: skip
    assert api.count("getFlaky") == 2
    assert len(waits.delays) == 1


async def test_an_oauth_token_refused_is_fetched_again_once(
    api: InventoryApi, client: httpx2.AsyncClient
) -> None:
    caller = _caller(api.base_url, client, Waits())
    await caller.call("getWithOAuth", {}, timeout=30)
    api.expire_tokens()

    result = await caller.call("getWithOAuth", {}, timeout=30)

    assert result.status == 200
    assert api.tokens_issued == 2


async def test_a_client_error_is_a_result_and_bad_arguments_never_reach_the_api(
    api: InventoryApi, client: httpx2.AsyncClient
) -> None:
    caller = _caller(api.base_url, client, Waits())

    missing = await caller.call("getItem", {"itemId": "404"}, timeout=30)
    with pytest.raises(FerrymanError) as invalid:
        await caller.call("listItems", {"limit": 0}, timeout=30)

    assert missing.is_error
    assert missing.status == 404
    assert invalid.value.code == "invalid_request"
    assert "limit" in invalid.value.message
    assert api.count("listItems") == 0


async def test_the_call_s_time_bounds_a_slow_operation(
    api: InventoryApi, client: httpx2.AsyncClient
) -> None:
    with pytest.raises(FerrymanError) as failed:
        await _caller(api.base_url, client, Waits(), retries=0).call(
            "getSlow", {"seconds": 5}, timeout=0.2
        )

    assert failed.value.code == "timeout"


async def test_a_non_idempotent_call_is_never_sent_twice() -> None:
    sent: list[str] = []

    def unavailable(request: httpx2.Request) -> httpx2.Response:
        sent.append(request.method)
        return httpx2.Response(503, headers={"retry-after": "0"})

    tool = OperationTool(
        name="create", description="", method="POST", path="/things",
        input_schema={"type": "object"}, output_schema=None, bindings={},
        read_only=False, idempotent=False,
    )  # fmt: skip
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(unavailable)) as http:
        auth = ApiAuth("x", {}, {}, base_url="http://api", client=http)
        caller = ApiCaller(
            "x", {"create": tool}, base_url="http://api", auth=auth, client=http,
            max_bytes=100, retries=3, sleep=Waits(),
        )  # fmt: skip
        with pytest.raises(FerrymanError):
            await caller.call("create", {}, timeout=5)

    assert sent == ["POST"]


async def test_a_large_body_is_read_only_up_to_the_limit() -> None:
    def huge(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200, content=b"x" * 1_000_000, headers={"content-type": "text/plain"}
        )

    tool = OperationTool(
        name="big", description="", method="GET", path="/big",
        input_schema={"type": "object"}, output_schema=None,
        bindings={"q": Binding("query", "q")}, read_only=True, idempotent=True,
    )  # fmt: skip
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(huge)) as http:
        auth = ApiAuth("x", {}, {}, base_url="http://api", client=http)
        caller = ApiCaller(
            "x", {"big": tool}, base_url="http://api", auth=auth, client=http, max_bytes=100,
        )  # fmt: skip
        result = await caller.call("big", {}, timeout=5)

    assert result.truncated
    assert result.content == [{"type": "text", "text": "x" * 100}]


@contextlib.asynccontextmanager
async def _cached_caller(
    api: InventoryApi, tmp_path: Path, mode: CacheMode
) -> AsyncIterator[ApiCaller]:
    async with (
        httpx2.AsyncClient() as plain,
        caching_client(tmp_path / f"{mode}.db", max_size=1 << 20) as cache,
    ):
        auth = ApiAuth("inv", SCHEMES, SECRETS, base_url=api.base_url, client=plain)
        yield ApiCaller(
            "inv", TOOLS, base_url=api.base_url, auth=auth, client=plain, max_bytes=10_000,
            cache_client=cache, cache_mode=mode, cache_ttl=60, sleep=Waits(),
        )  # fmt: skip


async def test_rfc_caching_follows_the_api_and_never_crosses_tenants(
    api: InventoryApi, tmp_path: Path
) -> None:
    async with _cached_caller(api, tmp_path, "rfc") as caller:
        first = await caller.call("getCached", {}, timeout=30, tenant="acme")
        again = await caller.call("getCached", {}, timeout=30, tenant="acme")
        other = await caller.call("getCached", {}, timeout=30, tenant="globex")
        uncached = [await caller.call("getUncached", {}, timeout=30, tenant="acme") for _ in "ab"]

    assert [first.cached, again.cached, other.cached] == [False, True, False]
    assert again.content == first.content
    assert api.count("getCached") == 2  # one per tenant
    assert api.count("getUncached") == 2  # no cache headers: not stored
    assert [r.cached for r in uncached] == [False, False]


async def test_ttl_caching_keeps_answers_without_cache_headers_but_not_writes(
    api: InventoryApi, tmp_path: Path
) -> None:
    async with _cached_caller(api, tmp_path, "ttl") as caller:
        first = await caller.call("getUncached", {}, timeout=30, tenant="acme")
        again = await caller.call("getUncached", {}, timeout=30, tenant="acme")
        for name in ("a", "b"):
            await caller.call("createItem", {"body": {"name": name}}, timeout=30, tenant="acme")

    assert [first.cached, again.cached] == [False, True]
    assert api.count("getUncached") == 1
    assert api.count("createItem") == 2
