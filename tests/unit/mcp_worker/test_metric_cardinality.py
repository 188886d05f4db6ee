"""The mcp_worker's `/metrics` stays bounded whatever producers send (design §2.3): 1,000
tool calls with random tenants, random tool names (unknown tools on a configured server,
and unknown servers), random reply topics and random arguments add no series past the
tenant budget, and no tool, server name, reply topic or request id becomes a label value.
The configured server is the inventory API (tests/fakes/openapi_api.py) on loopback."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ferryman_runtime.metric_labels import NONE, OTHER
from ferryman_runtime.sent_messages import REPLY, configured_topics
from mcp_worker.app import McpWorker
from mcp_worker.settings import McpWorkerSettings
from tests.fakes.openapi_api import ApiOptions, InventoryApi
from tests.unit.shared.metric_cardinality import (
    REQUESTS,
    Broker,
    pick_tenant,
    random_name,
    random_tenants,
    request_record,
    scrape,
    tenant_values,
)

CONFIGURED_TENANTS = {"acme", "globex"}
MAX_TENANTS = 50
SERVER = "inv"

FIXED_SERIES = 300
"""Series without a tenant, whatever producers send: about 40 of the kit, the server
(up, sessions, restarts, upstream calls, circuit) and the cache and audit counters, and per
operation, target (`inv` or `unknown`) and outcome (completed or not found) a counter and a
17-series duration histogram. Tenants add their quota series (none here: no rate limits)."""


@pytest.fixture
async def api() -> AsyncIterator[InventoryApi]:
    server = InventoryApi(ApiOptions())
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def worker(api: InventoryApi, tmp_path: Path) -> AsyncIterator[McpWorker]:
    registry_file = tmp_path / "servers.json"
    entry = {"type": "openapi", "spec": f"{api.base_url}/openapi/v1.json", "base_url": api.base_url}
    registry_file.write_text(json.dumps({"mcpServers": {SERVER: entry}}))
    settings = McpWorkerSettings(
        request_topic="t.mcp.requests",
        default_reply_topic="t.mcp.results",
        reply_topics=["*.results"],
        registry_file=registry_file,
        packages_dir=tmp_path / "packages",
        metrics_max_tenants=MAX_TENANTS,
    )
    mcp = McpWorker(settings, registry=CollectorRegistry(), environ={})
    mcp.catalog.recalled.set()  # no catalog to read back: every definition is a first sight
    yield mcp
    await mcp.usage.stop()


def _call(rng: random.Random) -> tuple[str, str]:
    """(server, tool): mostly a random tool on the configured server, else one it has, or
    a random server."""
    pick = rng.random()
    if pick < 0.1:
        return SERVER, "listItems"
    if pick < 0.2:
        return random_name("server-", rng), random_name("tool-", rng)
    return SERVER, random_name("tool-", rng)


async def test_random_tenants_tools_and_reply_topics_keep_the_scrape_bounded(
    worker: McpWorker,
) -> None:
    rng = random.Random(13)
    pool = random_tenants(rng)
    replies = [random_name("reply-", rng) + ".results" for _ in range(REQUESTS)]
    broker = Broker(topics=set(replies))
    await broker.attach(worker.worker)
    await worker.usage.start()
    chosen: set[str] = set()
    halfway: dict[str, set[str]] = {}
    for offset in range(REQUESTS):
        server, tool = _call(rng)
        request_id = random_name("req-", rng, 20)
        argument = random_name("arg-", rng)
        record = request_record(
            worker.worker.settings.request_topic,
            offset,
            "ferryman.mcp.tool.call.requested",
            {"server": server, "tool": tool, "arguments": {"q": argument}},
            request_id=request_id,
            tenant=pick_tenant(rng, CONFIGURED_TENANTS, pool),
            reply_to=replies[offset],
        )

        await worker.worker.pipeline(record, 1)

        chosen.update({tool, request_id, argument} | ({server} - {SERVER}))
        if offset == REQUESTS // 2 - 1:
            halfway = scrape(worker.worker).label_values()

    assert sum(1 for topic, _ in broker.sent if topic in replies) >= REQUESTS
    metrics = scrape(worker.worker)
    assert metrics.values("target") == {SERVER, "unknown"}
    assert metrics.values("server") <= {SERVER}
    assert metrics.values("upstream") <= {SERVER}
    destinations = metrics.values("messaging_destination_name")
    assert destinations <= configured_topics(worker.worker.settings) | {REPLY}
    assert REPLY in destinations
    tenants = metrics.values("tenant")
    assert len(tenants - CONFIGURED_TENANTS - {NONE, OTHER}) <= MAX_TENANTS
    assert metrics.per_tenant() <= tenant_values(CONFIGURED_TENANTS, MAX_TENANTS)
    assert metrics.leaked(chosen) == set()
    assert metrics.leaked(replies) == set()
    # The budgets filled in the first half: the second brings no new label value.
    assert {k: v - halfway.get(k, set()) for k, v in metrics.label_values().items()} == {
        k: set() for k in metrics.label_values()
    }
    assert metrics.series <= FIXED_SERIES + tenant_values(CONFIGURED_TENANTS, MAX_TENANTS)
