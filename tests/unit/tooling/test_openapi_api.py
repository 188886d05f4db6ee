"""The inventory API fake (`tests.fakes.openapi_api`) against its own OpenAPI documents:
both documents are valid, the answers conform to them, and every documented behaviour
(auth schemes, 429 then 200, ETag/304, raw path echo, OAuth2 expiry, v2) holds."""

from __future__ import annotations

import asyncio
import json
import sys
from base64 import b64encode
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientResponse, ClientSession
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator import validate
from yarl import URL

from tests.fakes.openapi_api import DOCUMENTS, ApiOptions, InventoryApi


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def document(version: int) -> dict[str, Any]:
    return json.loads((DOCUMENTS / f"api-v{version}.json").read_text())


PROBLEM_JSON = Config(extra_media_type_deserializers={"application/problem+json": json.loads})
SPECS = {v: OpenAPI.from_dict(document(v), config=PROBLEM_JSON) for v in (1, 2)}


@pytest.fixture
async def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def api(clock: ManualClock) -> AsyncIterator[InventoryApi]:
    server = InventoryApi(ApiOptions(limited_failures=2, flaky_failures=1, token_ttl=60), clock)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def http(api: InventoryApi) -> AsyncIterator[ClientSession]:
    async with ClientSession(base_url=api.base_url) as session:
        yield session


async def call(
    http: ClientSession, method: str, path: str, version: int = 1, **kwargs: Any
) -> tuple[ClientResponse, bytes]:
    """Send one request and check its answer against the version's document."""
    prefix = "/v2" if version == 2 else ""
    async with http.request(method, prefix + path, **kwargs) as response:
        body = await response.read()
    url = response.url
    request = MockRequest(
        f"{url.scheme}://{url.host}:{url.port}",
        method.lower(),
        url.path,
        args=dict(url.query),
    )
    headers = dict(response.headers)
    content_type = response.content_type if body else "application/json"
    SPECS[version].validate_response(
        request, MockResponse(body, response.status, headers, content_type)
    )
    return response, body


def test_both_documents_are_valid_openapi_3_1() -> None:
    for version in (1, 2):
        spec = document(version)
        validate(spec)
        assert spec["openapi"] == "3.1.0"


def test_v2_breaks_v1_exactly_as_documented() -> None:
    v1, v2 = document(1), document(2)
    assert "delete" in v1["paths"]["/items/{itemId}"]
    assert "delete" not in v2["paths"]["/items/{itemId}"]
    warehouse = v2["components"]["parameters"]["Warehouse"]
    assert warehouse["required"] is True
    assert {"$ref": "#/components/parameters/Warehouse"} in v2["paths"]["/items"]["get"][
        "parameters"
    ]
    assert v1["components"]["parameters"]["Limit"]["schema"]["type"] == "integer"
    assert v2["components"]["parameters"]["Limit"]["schema"]["type"] == "string"
    assert "description" in v1["components"]["schemas"]["ItemBase"]["properties"]
    assert "description" not in v2["components"]["schemas"]["ItemBase"]["properties"]
    added = set(v2["paths"]) - set(v1["paths"])
    assert added == {"/health"}


async def test_the_documents_are_served_over_http(http: ClientSession) -> None:
    for version in (1, 2):
        async with http.get(f"/openapi/v{version}.json") as response:
            assert await response.json() == document(version)


async def test_items_crud_with_limit_and_exploded_tags(
    api: InventoryApi, http: ClientSession
) -> None:
    response, body = await call(http, "GET", "/items", params=[("tag", "tools"), ("tag", "steel")])
    assert [i["name"] for i in json.loads(body)] == ["hammer"]
    assert api.requests_to("listItems")[-1].query == [("tag", "tools"), ("tag", "steel")]
    _, body = await call(http, "GET", "/items", params={"limit": "1"})
    assert len(json.loads(body)) == 1
    for bad in ("0", "101", "x"):
        response, _ = await call(http, "GET", "/items", params={"limit": bad})
        assert response.status == 400

    new = {"name": "drill", "dimensions": {"width": 1, "height": 2}}
    response, body = await call(http, "POST", "/items", json=new)
    assert response.status == 201
    created = json.loads(body)
    assert created == {**new, "id": "3"}
    assert json.loads(api.requests_to("createItem")[0].body) == new
    for wrong in ({"name": "x", "colour": "red"}, {"name": "x", "dimensions": {"width": 1}}, {}):
        response, _ = await call(http, "POST", "/items", json=wrong)
        assert response.status == 400

    response, body = await call(http, "PUT", "/items/3", json={"name": "cordless drill"})
    assert json.loads(body) == {"name": "cordless drill", "id": "3"}
    response, body = await call(http, "GET", "/items/3")
    assert json.loads(body)["name"] == "cordless drill"
    response, _ = await call(http, "DELETE", "/items/3")
    assert response.status == 204
    response, _ = await call(http, "GET", "/items/3")
    assert response.status == 404


async def test_get_item_echoes_the_raw_path_and_an_encoded_dot_dot_keeps_the_route(
    api: InventoryApi, http: ClientSession
) -> None:
    url = URL(f"{api.base_url}/items/..%2Fadmin", encoded=True)
    async with http.get(url) as response:
        problem = await response.json(content_type="application/problem+json")
    assert response.status == 404
    assert response.headers["X-Raw-Path"] == "/items/..%2Fadmin"
    assert problem["instance"] == "/items/..%2Fadmin"
    assert "'../admin'" in problem["detail"]
    assert api.requests[-1].raw_path == "/items/..%2Fadmin"
    assert api.requests[-1].operation == "getItem"
    assert api.count("adminTrap") == 0

    async with http.get(URL(f"{api.base_url}/admin", encoded=True)) as response:
        assert response.status == 200
    assert api.count("adminTrap") == 1


async def test_the_tree_nests_nodes_of_one_recursive_schema(http: ClientSession) -> None:
    _, body = await call(http, "GET", "/tree")
    tree = json.loads(body)
    assert [c["name"] for c in tree["children"]] == ["tools", "garden"]
    assert tree["children"][0]["children"][0] == {"name": "hammers", "children": []}


WRONG = ApiOptions(
    api_key="nope",
    bearer_token="nope",
    basic_user="alice",
    basic_password="nope",
)


def credentials(path: str, options: ApiOptions) -> dict[str, Any]:
    """Request keyword arguments carrying `options`' secret for the scheme of `path`."""
    return {
        "/auth/header": {"headers": {"X-Api-Key": options.api_key}},
        "/auth/query": {"params": {"api_key": options.api_key}},
        "/auth/cookie": {"cookies": {"session": options.api_key}},
        "/auth/bearer": {"headers": {"Authorization": f"Bearer {options.bearer_token}"}},
        "/auth/basic": {"headers": basic(options.basic_user, options.basic_password)},
    }[path]


@pytest.mark.parametrize(
    ("path", "scheme", "wrong_status"),
    [
        ("/auth/header", "apiKeyHeader", 403),
        ("/auth/query", "apiKeyQuery", 403),
        ("/auth/cookie", "apiKeyCookie", 403),
        ("/auth/bearer", "bearerAuth", 401),
        ("/auth/basic", "basicAuth", 401),
    ],
)
async def test_each_auth_scheme_accepts_the_right_and_refuses_a_wrong_or_missing_secret(
    api: InventoryApi, path: str, scheme: str, wrong_status: int
) -> None:
    for options, status in [(api.options, 200), (WRONG, wrong_status), (None, 401)]:
        async with ClientSession(base_url=api.base_url) as http:
            kwargs = credentials(path, options) if options else {}
            response, body = await call(http, "GET", path, **kwargs)
        assert response.status == status, (path, options)
        if status == 200:
            assert json.loads(body) == {"scheme": scheme, "ok": True}


CLIENT = ("client-1", "client-secret-1")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode()}


async def grant(http: ClientSession, **kwargs: Any) -> ClientResponse:
    """Ask the token endpoint for a client-credentials token (credentials in `kwargs`)."""
    form = {"grant_type": "client_credentials", **kwargs.pop("form", {})}
    response, _ = await call(http, "POST", "/oauth/token", data=form, **kwargs)
    return response


async def test_oauth_tokens_expire_and_a_fresh_one_is_accepted(
    api: InventoryApi, http: ClientSession, clock: ManualClock
) -> None:
    assert (await grant(http, headers=basic(CLIENT[0], "wrong"))).status == 401
    assert (await grant(http, form={"client_id": CLIENT[0], "client_secret": "x"})).status == 401
    assert api.tokens_issued == 0

    response = await grant(http, headers=basic(*CLIENT))
    issued = await response.json()
    assert (issued["token_type"], issued["expires_in"]) == ("Bearer", 60)
    bearer = {"Authorization": f"Bearer {issued['access_token']}"}
    response, _ = await call(http, "GET", "/auth/oauth", headers=bearer)
    assert response.status == 200

    clock.now += 60
    response, _ = await call(http, "GET", "/auth/oauth", headers=bearer)
    assert response.status == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]

    form = {"client_id": CLIENT[0], "client_secret": CLIENT[1]}
    fresh = await (await grant(http, form=form)).json()
    bearer = {"Authorization": f"Bearer {fresh['access_token']}"}
    response, _ = await call(http, "GET", "/auth/oauth", headers=bearer)
    assert response.status == 200
    assert api.tokens_issued == 2

    api.expire_tokens()
    response, _ = await call(http, "GET", "/auth/oauth", headers=bearer)
    assert response.status == 401
    made_up = {"Authorization": "Bearer made-up"}
    response, _ = await call(http, "GET", "/auth/oauth", headers=made_up)
    assert response.status == 401


async def test_limited_answers_429_with_retry_after_then_200(
    api: InventoryApi, http: ClientSession
) -> None:
    for _ in range(2):
        response, _ = await call(http, "GET", "/limited")
        assert (response.status, response.headers["Retry-After"]) == (429, "1")
    response, body = await call(http, "GET", "/limited")
    assert (response.status, json.loads(body)) == (200, {"hit": 3})
    assert api.count("getLimited") == 3


async def test_cached_revalidates_with_etag_and_uncached_has_no_cache_headers(
    api: InventoryApi, http: ClientSession
) -> None:
    response, _ = await call(http, "GET", "/cached")
    assert response.status == 200
    assert response.headers["Cache-Control"] == "max-age=60"
    etag = response.headers["ETag"]
    response, body = await call(http, "GET", "/cached", headers={"If-None-Match": etag})
    assert (response.status, body) == (304, b"")
    response, _ = await call(http, "GET", "/cached", headers={"If-None-Match": '"other"'})
    assert response.status == 200
    assert api.count("getCached") == 3

    for hit in (1, 2):
        response, body = await call(http, "GET", "/uncached")
        assert json.loads(body) == {"hit": hit}
        assert "ETag" not in response.headers
        assert "Cache-Control" not in response.headers
    assert api.count("getUncached") == 2


async def test_flaky_fails_first_then_succeeds(api: InventoryApi, http: ClientSession) -> None:
    response, _ = await call(http, "GET", "/flaky")
    assert response.status == 503
    response, body = await call(http, "GET", "/flaky")
    assert (response.status, json.loads(body)) == (200, {"hit": 2})
    assert api.count("getFlaky") == 2


async def test_slow_binary_text_and_the_problem_endpoint(http: ClientSession) -> None:
    response, body = await call(http, "GET", "/slow", params={"seconds": "0"})
    assert json.loads(body) == {"slept": 0}
    response, _ = await call(http, "GET", "/slow", params={"seconds": "soon"})
    assert response.status == 400
    response, body = await call(http, "GET", "/binary")
    assert (response.content_type, body) == ("application/octet-stream", bytes(range(256)))
    response, body = await call(http, "GET", "/text")
    assert (response.content_type, body) == ("text/plain", b"hello, inventory\n")
    response, body = await call(http, "GET", "/errors/not-found")
    assert response.status == 404
    assert response.content_type == "application/problem+json"
    assert json.loads(body)["status"] == 404


async def test_slow_holds_the_answer_until_its_delay_has_passed(http: ClientSession) -> None:
    pending = asyncio.ensure_future(call(http, "GET", "/slow", params={"seconds": "30"}))
    done, _ = await asyncio.wait({pending}, timeout=0.2)
    assert not done
    pending.cancel()


async def test_v2_under_its_prefix_applies_every_breaking_change(
    api: InventoryApi, http: ClientSession
) -> None:
    response, _ = await call(http, "GET", "/items", version=2)
    assert response.status == 400
    response, body = await call(
        http, "GET", "/items", version=2, params={"warehouse": "north", "limit": "5"}
    )
    assert response.status == 200
    assert all("description" not in item for item in json.loads(body))
    async with http.delete("/v2/items/1") as response:
        assert response.status == 405
    assert "1" in api.items
    response, body = await call(http, "GET", "/health", version=2)
    assert json.loads(body) == {"status": "ok"}
    async with http.get("/health") as response:
        assert response.status == 404
    assert {r.version for r in api.requests} == {1, 2}


async def test_standalone_mode_prints_its_port_and_serves() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.openapi_api", "--port", "0",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        port = int(await asyncio.wait_for(process.stdout.readline(), timeout=30))
        async with (
            ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/text") as response,
        ):
            assert await response.text() == "hello, inventory\n"
    finally:
        process.terminate()
        await process.wait()
