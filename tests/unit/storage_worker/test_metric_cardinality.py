"""The storage_worker's `/metrics` stays bounded whatever producers send (design §2.3):
1,000 requests with random tenants, reply topics and object keys add no series past the
tenant budget, and no key, reply topic or request id becomes a label value."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ferryman_runtime.metric_labels import OTHER
from ferryman_runtime.sent_messages import REPLY, configured_topics
from storage_worker.app import StorageWorker
from storage_worker.settings import StorageWorkerSettings
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
OPERATIONS = ("put", "get", "head", "delete", "list")

FIXED_SERIES = 400
"""Series without a tenant, whatever producers send: about 20 of the kit, and per operation
and outcome (here 5 operations, each completed or failed one way, and rate limited) one
counter and a 17-series duration histogram, object sizes per operation (about 30), a few
usage and event counters. Tenants add one quota series each (the budget's values)."""


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[StorageWorker]:
    policy = tmp_path / "policy.json"
    limit = {"requests": 1, "window": 600}  # a tenant's second request is refused
    rule = {"spaces": {"local": "{tenant}/"}, "rate_limit": limit}
    policy.write_text(
        json.dumps(
            {
                "backends": {"local": {"type": "local", "root": str(tmp_path / "disk")}},
                "tenants": {**{t: rule for t in sorted(CONFIGURED_TENANTS)}, "*": rule},
            }
        )
    )
    settings = StorageWorkerSettings(
        request_topic="t.storage.requests",
        default_reply_topic="t.storage.results",
        reply_topics=["*.results"],
        policy_file=policy,
        local_root=tmp_path / "disk",
        metrics_max_tenants=MAX_TENANTS,
    )
    storage = StorageWorker(settings, registry=CollectorRegistry(), environ={})
    yield storage
    await storage.usage.stop()
    await storage.stores.close()


def _data(operation: str, key: str) -> dict[str, Any]:
    if operation == "put":
        return {"key": key, "content_base64": base64.b64encode(key.encode()).decode()}
    if operation == "list":
        return {"prefix": key}
    return {"key": key}


async def test_random_tenants_reply_topics_and_keys_keep_the_scrape_bounded(
    worker: StorageWorker,
) -> None:
    rng = random.Random(13)
    pool = random_tenants(rng)
    replies = [random_name("reply-", rng) + ".results" for _ in range(REQUESTS)]
    broker = Broker(topics=set(replies))  # all exist before the directory's first listing
    await broker.attach(worker.worker)
    await worker.usage.start()
    chosen: set[str] = set(pool)
    halfway: dict[str, set[str]] = {}
    for offset in range(REQUESTS):
        key = f"{random_name('dir-', rng)}/{random_name('key-', rng)}.txt"
        request_id = random_name("req-", rng, 20)
        operation = OPERATIONS[offset % len(OPERATIONS)]
        record = request_record(
            worker.worker.settings.request_topic,
            offset,
            f"ferryman.storage.{operation}.requested",
            _data(operation, key),
            request_id=request_id,
            tenant=pick_tenant(rng, CONFIGURED_TENANTS, pool),
            reply_to=replies[offset],
        )

        await worker.worker.pipeline(record, 1)

        chosen.update({key, key.split("/")[0], request_id})
        if offset == REQUESTS // 2 - 1:
            halfway = scrape(worker.worker).label_values()

    assert sum(1 for topic, _ in broker.sent if topic in replies) >= REQUESTS
    metrics = scrape(worker.worker)
    tenants = metrics.values("tenant")
    assert len(tenants - CONFIGURED_TENANTS - {OTHER}) == MAX_TENANTS  # budget used up
    assert OTHER in tenants
    assert metrics.per_tenant() <= tenant_values(CONFIGURED_TENANTS | {"default"}, MAX_TENANTS)
    destinations = metrics.values("messaging_destination_name")
    assert destinations <= configured_topics(worker.worker.settings) | {REPLY}
    assert REPLY in destinations
    assert metrics.values("backend") == metrics.values("target") == {"local"}
    assert metrics.values("upstream") <= {"local"}
    assert metrics.leaked(chosen - set(tenants)) == set()
    assert metrics.leaked(replies) == set()
    # The budgets filled in the first half: the second brings no new label value.
    assert {k: v - halfway.get(k, set()) for k, v in metrics.label_values().items()} == {
        k: set() for k in metrics.label_values()
    }
    assert metrics.series <= FIXED_SERIES + tenant_values(CONFIGURED_TENANTS, MAX_TENANTS)
