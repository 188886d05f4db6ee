"""The response cache end to end: real worker processes, the real Kafka, the fake OpenAI and,
for the shared backend, a real redis-server.

A hit is told from a miss by the fake's recorded calls and `completed.cached`; expiry and
invalidation are waited on by polling with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from ferryman.client import FerrymanClient
from ferryman.contracts import ChatChunk, ChatCompleted
from llm_worker.caching.backends import RedisStore
from llm_worker.caching.response_key import KEY_PREFIX
from tests.fakes.openai_server import FakeOpenAI, Scenario
from tests.integration.conftest import Topics, WorkerProcess, open_client

pytestmark = pytest.mark.integration

MODEL = "gpt-cache"
WorkerFactory = Callable[..., WorkerProcess]


def _routing(tmp_path: Path) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(
        f"deployments:\n  d: {{provider: openai, model: {MODEL}}}\n"
        "routes:\n"
        "  cached: {deployments: [d], response_cache: {enabled: true, ttl: 600}}\n"
        "  plain: {deployments: [d]}\n"
    )
    return path


def _request(text: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": "cached",
        "messages": [{"role": "user", "content": text}],
        "temperature": 0,
        **fields,
    }


@pytest.fixture(params=["memory", "redis"])
def backend_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The worker's response-cache settings for one backend (redis: the session's server)."""
    if request.param == "memory":
        return {"LLM_WORKER_RESPONSE_CACHE__BACKEND": "memory"}
    url = request.getfixturevalue("redis_url")
    return {
        "LLM_WORKER_RESPONSE_CACHE__BACKEND": "redis",
        "LLM_WORKER_RESPONSE_CACHE__REDIS_URL": url,
    }


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    server.scenarios[MODEL] = Scenario(tokens=6)
    await server.start()
    yield server
    await server.stop()


def _env(
    fake: FakeOpenAI, tmp_path: Path, topics: Topics, backend: dict[str, str]
) -> dict[str, str]:
    return {
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": "sk-test",
        "LLM_WORKER_ROUTING_FILE": str(_routing(tmp_path)),
        "LLM_WORKER_CONTROL_TOPIC": topics.requests.removesuffix(".llm.requests") + ".control",
        # A loaded machine may take more than the default 50 ms to answer a lookup.
        "LLM_WORKER_RESPONSE_CACHE__LOOKUP_TIMEOUT": "2",
        **backend,
    }


async def _started(make: WorkerFactory, **env: str) -> WorkerProcess:
    worker = make(**env)
    worker.start()
    await worker.wait_ready()
    return worker


async def _stream(
    client: FerrymanClient, request: dict[str, Any], tenant: str
) -> tuple[list[ChatChunk], ChatCompleted]:
    chunks: list[ChatChunk] = []
    async for event in client.chat_stream(request, tenant=tenant, timeout=60):
        if isinstance(event, ChatChunk):
            chunks.append(event)
        elif isinstance(event, ChatCompleted):
            return chunks, event
    raise AssertionError("no completed event")


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a `/metrics` text (None: absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    """Poll `check` until it holds, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s")
        await asyncio.sleep(0.2)


async def test_miss_hit_streaming_tenants_and_sampling(
    worker_factory: WorkerFactory,
    client: FerrymanClient,
    fake: FakeOpenAI,
    topics: Topics,
    tmp_path: Path,
    backend_env: dict[str, str],
) -> None:
    await _started(worker_factory, **_env(fake, tmp_path, topics, backend_env))

    fresh_chunks, fresh = await _stream(client, _request("what is a ferry?"), "acme")
    assert len(fake.chat_requests()) == 1
    assert fresh.cached is None
    assert len(fresh_chunks) == 6

    async def hit() -> bool:
        _, completed = await _stream(client, _request("what is a ferry?"), "acme")
        return completed.cached is True

    await _until(hit)  # the store is written in the background after `completed`
    assert len(fake.chat_requests()) <= 2

    calls = len(fake.chat_requests())
    hit_chunks, cached = await _stream(client, _request("what is a ferry?"), "acme")
    assert len(fake.chat_requests()) == calls
    assert [(c.index, c.delta) for c in hit_chunks] == [(c.index, c.delta) for c in fresh_chunks]
    assert "".join(c.delta.content or "" for c in hit_chunks) == cached.content == fresh.content
    assert cached.cached is True
    assert (cached.usage.input_tokens, cached.usage.output_tokens) == (0, 0)
    assert cached.original_usage == fresh.usage
    assert cached.cached_at is not None
    assert cached.chunk_count == 6
    assert (cached.deployment, cached.model) == ("d", fresh.model)

    not_streamed = await client.chat(_request("what is a ferry?", stream=False), tenant="acme")
    assert not_streamed.cached is True
    assert not_streamed.chunk_count == 0
    assert len(fake.chat_requests()) == calls

    other = await client.chat(_request("what is a ferry?"), tenant="globex")
    assert other.cached is None
    assert len(fake.chat_requests()) == calls + 1

    for _ in range(2):  # sampled (no temperature, no seed): never cached
        sampled = await client.chat(_request("tell a story", temperature=0.8), tenant="acme")
        assert sampled.cached is None
    assert len(fake.chat_requests()) == calls + 3

    for _ in range(2):  # the `plain` route has the cache off
        plain = await client.chat(_request("hi", model="plain"), tenant="acme")
        assert plain.cached is None
    assert len(fake.chat_requests()) == calls + 5


async def test_an_answer_expires_after_its_ttl(
    worker_factory: WorkerFactory,
    client: FerrymanClient,
    fake: FakeOpenAI,
    topics: Topics,
    tmp_path: Path,
    backend_env: dict[str, str],
) -> None:
    await _started(worker_factory, **_env(fake, tmp_path, topics, backend_env))
    request = _request("short-lived", response_cache={"ttl": 3})
    first = await client.chat(request, tenant="acme")
    assert first.cached is None
    outcomes: list[bool] = []

    async def expired() -> bool:
        completed = await client.chat(request, tenant="acme")
        outcomes.append(completed.cached is True)
        return len(outcomes) > 1 and not outcomes[-1]

    await _until(expired)
    assert True in outcomes, "the answer was never served from the cache"
    assert outcomes.index(False) > outcomes.index(True)


async def test_invalidation_by_tenant_and_prefix_through_the_control_topic(
    worker_factory: WorkerFactory,
    client: FerrymanClient,
    fake: FakeOpenAI,
    topics: Topics,
    tmp_path: Path,
    backend_env: dict[str, str],
) -> None:
    env = _env(fake, tmp_path, topics, backend_env)
    worker = await _started(worker_factory, **env)
    control = env["LLM_WORKER_CONTROL_TOPIC"]
    requests = {
        ("acme", "docs"): _request("a", response_cache={"namespace": "docs"}),
        ("acme", "blog"): _request("b", response_cache={"namespace": "blog"}),
        ("globex", "docs"): _request("c", response_cache={"namespace": "docs"}),
    }

    async def cached(tenant: str, namespace: str) -> bool:
        completed = await client.chat(requests[tenant, namespace], tenant=tenant)
        return completed.cached is True

    for tenant, namespace in requests:
        await _until(lambda t=tenant, n=namespace: cached(t, n))

    await client.invalidate_llm_cache(tenant="acme", prefix="docs/", control_topic=control)

    async def dropped(tenant: str, namespace: str) -> bool:
        return not await cached(tenant, namespace)

    await _until(lambda: dropped("acme", "docs"))
    assert await cached("acme", "blog")
    assert await cached("globex", "docs")

    await client.invalidate_llm_cache(tenant="globex", control_topic=control)
    await _until(lambda: dropped("globex", "docs"))
    assert await cached("acme", "blog")

    async def counted() -> bool:
        text = await asyncio.to_thread(worker.metrics)
        return _sample(text, "llm_worker_response_cache_invalidations_total", scope="tenant") == 2

    await _until(counted)

    if backend_env["LLM_WORKER_RESPONSE_CACHE__BACKEND"] != "redis":
        return
    # A restarted worker reads both events back; the answers stored since stay.
    await _until(lambda: cached("acme", "docs"))
    worker.kill()
    await _started(worker_factory, **env)
    assert await cached("acme", "docs")
    assert await cached("globex", "docs")


async def test_two_replicas_share_the_redis_cache(
    worker_factory: WorkerFactory,
    client: FerrymanClient,
    fake: FakeOpenAI,
    topics: Topics,
    tmp_path: Path,
    redis_url: str,
    kafka_bootstrap: str,
) -> None:
    backend = {
        "LLM_WORKER_RESPONSE_CACHE__BACKEND": "redis",
        "LLM_WORKER_RESPONSE_CACHE__REDIS_URL": redis_url,
    }
    env = _env(fake, tmp_path, topics, backend)
    other = Topics(
        requests=topics.requests.replace("t-", "t2-", 1),
        replies=topics.replies.replace("t-", "t2-", 1),
        dlq=topics.dlq.replace("t-", "t2-", 1),
        group=topics.group + "-b",
    )
    await _started(worker_factory, **env)
    await _started(
        worker_factory,
        **env,
        LLM_WORKER_REQUEST_TOPIC=other.requests,
        LLM_WORKER_DEFAULT_REPLY_TOPIC=other.replies,
        LLM_WORKER_GROUP_ID=other.group,
        LLM_WORKER_INSTANCE_ID="replica-b",
    )
    request = _request("shared between replicas")
    first = await client.chat(request, tenant="acme")
    assert first.cached is None
    async with open_client(kafka_bootstrap, other, partitions=3) as client_b:

        async def hit_on_b() -> bool:
            completed = await client_b.chat(request, tenant="acme")
            return completed.cached is True

        await _until(hit_on_b)
    assert len(fake.chat_requests()) <= 2  # B answered from A's entry (at most one race)


async def test_the_redis_store_keeps_ttls_and_acts_on_an_invalidation_once(redis_url: str) -> None:
    prefix = f"test-{time.monotonic_ns()}/"
    store = RedisStore(redis_url, marker_ttl=60)
    raw = aioredis.Redis.from_url(redis_url)  # pyright: ignore[reportUnknownMemberType]
    try:
        await store.put(KEY_PREFIX + prefix + "a", b"1", 30)
        await store.put(KEY_PREFIX + prefix + "b", b"2", 30)
        await store.put(KEY_PREFIX + "other/" + prefix, b"3", 30)
        assert await store.get([KEY_PREFIX + prefix + "a", KEY_PREFIX + prefix + "x"]) == [
            b"1",
            None,
        ]
        ttl_ms = await raw.pttl(KEY_PREFIX + prefix + "a")  # pyright: ignore[reportUnknownMemberType]
        assert 0 < ttl_ms <= 30_000
        now = datetime.now(UTC) + timedelta(seconds=1)
        marker = prefix.strip("/")
        assert await store.invalidate(prefix, now, marker) == 2
        await store.put(KEY_PREFIX + prefix + "c", b"4", 30)
        assert await store.invalidate(prefix, now, marker) == 0  # a replay: the marker is set
        assert await store.get([KEY_PREFIX + prefix + "c", KEY_PREFIX + "other/" + prefix]) == [
            b"4",
            b"3",
        ]
    finally:
        await raw.aclose()
        await store.aclose()
