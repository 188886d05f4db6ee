"""Credentials of an OpenAPI operation's calls, against the inventory API's auth endpoints."""

from __future__ import annotations

import httpx2
import pytest

from ferryman.contracts import FerrymanError
from mcp_worker.openapi import OperationTool
from mcp_worker.openapi.auth import ApiAuth, SchemeSecret
from mcp_worker.openapi.http_request import build_request
from tests.fakes.openapi_api import InventoryApi
from tests.unit.mcp_worker.conftest import INVENTORY_SCHEMES, INVENTORY_TOOLS

TOOLS = INVENTORY_TOOLS
SCHEMES = INVENTORY_SCHEMES
RIGHT = {
    "apiKeyHeader": SchemeSecret(value="key-123"),
    "apiKeyQuery": SchemeSecret(value="key-123"),
    "apiKeyCookie": SchemeSecret(value="key-123"),
    "bearerAuth": SchemeSecret(value="bearer-123"),
    "basicAuth": SchemeSecret(username="alice", password="wonderland"),
    "oauth": SchemeSecret(client_id="client-1", client_secret="client-secret-1"),
}


async def _call(
    api: InventoryApi, tool: OperationTool, secrets: dict[str, SchemeSecret]
) -> httpx2.Response:
    async with httpx2.AsyncClient() as client:
        auth = ApiAuth("inv", SCHEMES, secrets, base_url=api.base_url, client=client)
        request = build_request(tool, {}, api.base_url)
        requirement = auth.requirement(tool.security)
        return await client.send(await auth.apply(request, requirement))


@pytest.mark.parametrize(
    ("operation", "scheme", "wrong"),
    [
        ("getWithHeaderKey", "apiKeyHeader", SchemeSecret(value="nope")),
        ("getWithQueryKey", "apiKeyQuery", SchemeSecret(value="nope")),
        ("getWithCookie", "apiKeyCookie", SchemeSecret(value="nope")),
        ("getWithBearer", "bearerAuth", SchemeSecret(value="nope")),
        ("getWithBasic", "basicAuth", SchemeSecret(username="alice", password="nope")),
    ],
)
async def test_each_scheme_puts_the_secret_where_the_spec_says(
    api: InventoryApi, operation: str, scheme: str, wrong: SchemeSecret
) -> None:
    right = await _call(api, TOOLS[operation], RIGHT)
    refused = await _call(api, TOOLS[operation], {**RIGHT, scheme: wrong})

    assert right.status_code == 200
    assert refused.status_code in (401, 403)


async def test_an_oauth_token_is_fetched_once_and_again_after_a_401(api: InventoryApi) -> None:
    tool = TOOLS["getWithOAuth"]
    async with httpx2.AsyncClient() as client:
        auth = ApiAuth("inv", SCHEMES, RIGHT, base_url=api.base_url, client=client)
        requirement = auth.requirement(tool.security)
        assert requirement == {"oauth": ("inventory:read",)}

        async def call() -> httpx2.Response:
            request = build_request(tool, {}, api.base_url)
            return await client.send(await auth.apply(request, requirement))

        first, second = await call(), await call()
        api.expire_tokens()
        expired = await call()
        assert auth.forget_tokens(requirement)
        again = await call()

    assert [r.status_code for r in (first, second, expired, again)] == [200, 200, 401, 200]
    assert api.tokens_issued == 2


async def test_a_bad_client_secret_is_an_auth_failure_without_the_secret(
    api: InventoryApi,
) -> None:
    secrets = {**RIGHT, "oauth": SchemeSecret(client_id="client-1", client_secret="s3cr3t-x")}

    with pytest.raises(FerrymanError) as failed:
        await _call(api, TOOLS["getWithOAuth"], secrets)

    assert failed.value.code == "auth"
    assert "s3cr3t-x" not in str(failed.value)


async def test_an_operation_without_configured_credentials_is_refused_clearly() -> None:
    async with httpx2.AsyncClient() as client:
        auth = ApiAuth("inv", SCHEMES, {}, base_url="http://127.0.0.1:1", client=client)

    with pytest.raises(FerrymanError, match="no credentials configured for basicAuth"):
        auth.requirement(TOOLS["getWithBasic"].security)
    assert auth.requirement(TOOLS["getItem"].security) == {}
