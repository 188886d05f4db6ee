"""The metrics scheme against real scrapes: each of the three workers runs in the test
process on the real Kafka, serves a little real traffic (an LLM tool loop through the
mcp_worker, a retried chat, a storage put with its pipeline and a tenant quota, a poison
record), then answers `GET /metrics` through its host app. Every scrape must be lint-clean
for promtool, label every sample with its service, have no `_created` series, and export
only families of deploy/prometheus/metric_names.txt with their listed type and labels; and
every listed family must come from some worker."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path

import pytest
from faststream.asgi import AsgiFastStream
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from ferryman.publisher import KafkaPublisher
from tests.asgi_get import asgi_get
from tests.integration.conftest import read_topic
from tests.integration.storage_harness import StorageHarness, running_storage_worker
from tests.integration.test_mcp_worker_e2e import wait_until
from tests.integration.tool_loop_harness import MODEL, tool_loop_stack, tool_request, toolbox_call
from tests.unit.tooling.promql_names import Family, families, family_of, promtool

pytestmark = pytest.mark.integration

WORKERS = ("llm_worker", "mcp_worker", "storage_worker")

ALLOWED_ABSENT = {
    "up": "added by Prometheus to every target, never by a worker",
    "ferryman_messages_retried_total": "a handler raising an unexpected error (a worker bug); "
    "tests/unit/shared/test_request_pipeline.py",
    "ferryman_messages_exhausted_total": "the same, after the last attempt",
    "ferryman_messages_undecodable_total": "a record aiokafka cannot decode (raw produce "
    "request); tests/integration/test_parallel_consumer.py",
    "llm_worker_failovers_total": "a routing file with a failing deployment and a fallback; "
    "tests/unit/llm_worker/test_routing.py",
    "llm_worker_stream_restarts_total": "a stream cut mid-answer; test_fault_matrix.py",
    "llm_worker_quota_waits_total": "a deployment or tenant quota full; test_quotas.py",
    "mcp_worker_tool_definition_changes_total": "a server changing a tool's definition; "
    "tests/integration/test_mcp_worker_e2e.py",
    "mcp_worker_api_document_changes_total": "an OpenAPI server whose document changes; "
    "tests/integration/test_openapi_worker.py",
    "mcp_worker_api_invalid_responses_total": "an OpenAPI server answering off its document",
    "mcp_worker_rate_limit_waits_total": "an OpenAPI server's rate limit reached",
    "llm_worker_response_cache_lookups_total": "a route or request with the response cache "
    "on; tests/integration/test_response_cache_e2e.py",
    "llm_worker_response_cache_skips_total": "the same, with a request it may not cache",
    "llm_worker_response_cache_bytes_total": "the same, storing or serving an answer",
    "llm_worker_response_cache_invalidations_total": "an invalidation control event; "
    "tests/integration/test_response_cache_e2e.py",
    "llm_worker_response_cache_errors_total": "a failing cache backend; "
    "tests/unit/llm_worker/test_response_cache.py",
    "llm_worker_gemini_cache_operations_total": "a Gemini request with cache breakpoints; "
    "tests/unit/llm_worker/test_gemini_cache_lifecycle.py",
}
"""Listed families only a specific fault or configuration creates (no worker exports a
labelled family before its first sample), with where that is tested."""

PRICES = {
    "version": "test-1",
    "source": "the metrics scheme test",
    "models": {"openai/*": {"input_usd_per_million": 1, "output_usd_per_million": 2}},
}

STORAGE_TENANT = "acme"


async def scrape(app: AsgiFastStream) -> str:
    """`GET /metrics` of a worker's host app, through its ASGI interface."""
    return await asgi_get(app, "/metrics")


LAG_INTERVAL = 0.2
"""Seconds between consumer lag refreshes (the lag families appear after the first)."""


async def exported(registry: CollectorRegistry, name: str) -> None:
    """Wait (bounded) until `registry` has a sample of `name`: state the worker refreshes
    in the background, with no event to await."""
    await wait_until(
        lambda: any(
            sample.name == name for family in registry.collect() for sample in family.samples
        )
    )


async def dead_letter_a_poison_record(
    publisher: KafkaPublisher, bootstrap: str, request_topic: str
) -> None:
    """Publish a record that is no CloudEvent and wait for it on the dead-letter topic."""
    await publisher.send_and_wait(request_topic, b"not a cloudevent", key=b"poison")
    await read_topic(bootstrap, f"{request_topic}.dlq", until=1)


async def _llm_and_mcp(bootstrap: str, tmp_path: Path) -> dict[str, str]:
    """A tool loop through both workers, a chat retried once, a poison record each."""
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(PRICES))
    unique = uuid.uuid4().hex[:10]
    async with tool_loop_stack(
        bootstrap,
        unique,
        tmp_path,
        mcp_overrides={"lag_interval": LAG_INTERVAL},
        price_table=prices,
        retry_base_delay=0,
        retry_max_delay=0,
        lag_interval=LAG_INTERVAL,
    ) as stack:
        stack.fakes.script(
            "openai", MODEL, tool_steps=[[toolbox_call("echo", text="hi")]], echo_tool_results=True
        )
        stack.fakes.script("openai", "flaky", status=500, fail_first=1)
        loop = [e async for e in stack.client.chat_stream(tool_request(f"openai/{MODEL}"))]
        assert type(loop[-1]).__name__ == "ChatCompleted", loop[-1]
        retried = await stack.client.chat(
            {"model": "openai/flaky", "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        assert retried.content
        for request_topic in (stack.settings.request_topic, stack.mcp.settings.request_topic):
            await dead_letter_a_poison_record(stack.mcp.publisher, bootstrap, request_topic)
        for registry in (stack.llm.worker.registry, stack.mcp.metrics):
            await exported(registry, "ferryman_kafka_consumer_lag_messages")
        return {
            "llm_worker": await scrape(stack.llm.worker.app()),
            "mcp_worker": await scrape(stack.mcp.worker.worker.app()),
        }


async def _rate_limited(harness: StorageHarness) -> None:
    """Head requests of the quota'd tenant until one is refused (at most a few)."""
    for _ in range(3):
        reply = await harness.call("head", {"key": "inbox/a.txt"}, tenant=STORAGE_TENANT)
        if reply.type.endswith(".failed"):
            assert reply.data["error"]["code"] == "rate_limited", reply.data
            return
    raise AssertionError("the tenant's request quota never refused a request")


async def _storage(bootstrap: str, tmp_path: Path) -> dict[str, str]:
    """A put starting a pipeline, requests past a tenant quota, a poison record."""
    policy = {
        "backends": {"local": {"type": "local", "root": str(tmp_path / "disk")}},
        "tenants": {
            STORAGE_TENANT: {
                "spaces": {"local": "acme/"},
                "rate_limit": {"requests": 2, "window": 600},
                "on_upload": [{"prefix": "inbox/", "pipeline": "text"}],
            },
            "*": {"spaces": {"local": "{tenant}/"}},
        },
    }
    unique = uuid.uuid4().hex[:10]
    async with running_storage_worker(
        bootstrap, unique, tmp_path, policy=policy, lag_interval=LAG_INTERVAL
    ) as harness:
        put = await harness.put("inbox/a.txt", b"hello", tenant=STORAGE_TENANT)
        assert put.type == "ferryman.storage.put.completed", put.data
        registry = harness.worker.worker.registry
        await exported(registry, "storage_worker_pipeline_steps_total")
        await _rate_limited(harness)
        await dead_letter_a_poison_record(
            harness.publisher, bootstrap, harness.settings.request_topic
        )
        await exported(registry, "ferryman_kafka_consumer_lag_messages")
        return {"storage_worker": await scrape(harness.worker.worker.app())}


@pytest.fixture(scope="module")
async def scrapes(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each worker's `/metrics` text after its traffic."""
    texts = await _llm_and_mcp(kafka_bootstrap, tmp_path_factory.mktemp("llm_mcp"))
    texts |= await _storage(kafka_bootstrap, tmp_path_factory.mktemp("storage"))
    return texts


def _exported(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """Series name → (family type, label keys without `le`) of a scrape."""
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset(sample.labels) - {"le"}
            known = out.setdefault(sample.name, (family.type, labels))
            assert known == (family.type, labels), f"{sample.name}: label sets differ"
    return out


@pytest.mark.parametrize("worker", WORKERS)
async def test_promtool_check_metrics_is_silent_on_the_scrape(
    scrapes: dict[str, str], worker: str
) -> None:
    checked = await asyncio.to_thread(
        subprocess.run,
        [promtool(), "check", "metrics"],
        input=scrapes[worker],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


@pytest.mark.parametrize("worker", WORKERS)
def test_every_sample_names_its_service_and_no_created_series(
    scrapes: dict[str, str], worker: str
) -> None:
    samples = [s for f in text_string_to_metric_families(scrapes[worker]) for s in f.samples]

    assert len(samples) > 50
    assert {s.labels.get("service") for s in samples} == {worker}
    assert [s.name for s in samples if s.name.endswith("_created")] == []


@pytest.mark.parametrize("worker", WORKERS)
def test_every_exported_family_is_listed_with_its_type_and_labels(
    scrapes: dict[str, str], worker: str
) -> None:
    listed = families()
    wrong: list[str] = []
    for name, (kind, labels) in sorted(_exported(scrapes[worker]).items()):
        family = family_of(name, listed)
        if family is None:
            wrong.append(f"{name} ({kind}, {sorted(labels)}) is not in metric_names.txt")
        elif (family.type, family.labels) != (kind, labels):
            wrong.append(
                f"{name} is {kind} {sorted(labels)}; listed {family.type} {sorted(family.labels)}"
            )

    assert wrong == []


def test_every_listed_family_is_exported_by_some_worker(scrapes: dict[str, str]) -> None:
    listed = families()
    exported: set[Family] = set()
    for text in scrapes.values():
        for name in _exported(text):
            family = family_of(name, listed)
            if family is not None:
                exported.add(family)

    missing = {name for name in listed if listed[name] not in exported}

    assert missing - set(ALLOWED_ABSENT) == set()
    assert set(ALLOWED_ABSENT) - set(listed) == set()  # no stale excuse
