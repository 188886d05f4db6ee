"""The response cache: which requests it applies to, the memory store's bounds, a hit's
replay through the chat service, and a failing backend served as misses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from ferryman.contracts import (
    LLM_CHAT_CHUNK,
    LLM_CHAT_COMPLETED,
    CacheInvalidation,
    ChatRequest,
)
from ferryman_runtime.resilience import Breaker
from llm_worker.caching.backends import INVALIDATION_MARKER, MemoryStore, RedisStore
from llm_worker.caching.response_cache import ResponseCache
from llm_worker.caching.response_key import KEY_PREFIX
from llm_worker.caching.wiring import build_response_cache
from llm_worker.chat.service import ChatJob, ChatService, LlmMetrics
from llm_worker.chat.streaming import Completion, Finish, StreamEvent, TextDelta, UsageReport, fold
from llm_worker.providers.resolver import ModelResolver
from llm_worker.routing.config import Route, RoutingConfig
from llm_worker.routing.table import build_table
from llm_worker.settings import LlmWorkerSettings, ResponseCacheSettings
from tests.unit.llm_worker.recording_replies import RecordingReplies


class Clock:
    """Wall-clock seconds, moved by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingModel:
    """Streams `words` as text deltas, then usage and a finish; counts its calls."""

    provider = "scripted"

    def __init__(self, words: list[str], finish: str = "stop") -> None:
        self.words = words
        self.finish = finish
        self.calls = 0

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        self.calls += 1
        for word in self.words:
            await asyncio.sleep(0)
            yield TextDelta(text=word)
        yield UsageReport(input_tokens=12, output_tokens=len(self.words), cached_input_tokens=4)
        yield Finish.model_validate({"reason": self.finish})

    async def generate(self, request: ChatRequest, model: str) -> Completion:
        return await fold(self.stream(request, model))

    async def list_models(self) -> list[str]:
        return ["m"]

    async def aclose(self) -> None:
        return None


class BrokenStore:
    """A backend that fails (or hangs) on every call, counting them."""

    def __init__(self, hang: bool = False) -> None:
        self.calls = 0
        self._hang = hang

    async def get(self, keys: list[str]) -> list[bytes | None]:
        self.calls += 1
        if self._hang:
            await asyncio.Event().wait()
        raise ConnectionError("redis is down")

    async def put(self, key: str, blob: bytes, ttl: float) -> None:
        self.calls += 1
        raise ConnectionError("redis is down")

    async def invalidate(self, prefix: str, before: datetime, marker: str) -> int:
        raise ConnectionError("redis is down")

    async def aclose(self) -> None:
        return None


_METRICS: dict[int, tuple[CollectorRegistry, LlmMetrics]] = {}


def _metrics(registry: CollectorRegistry) -> LlmMetrics:
    """The one `LlmMetrics` of `registry` (a registry takes each family once)."""
    found = _METRICS.get(id(registry))
    if found is None or found[0] is not registry:
        found = _METRICS[id(registry)] = (registry, LlmMetrics(registry))
    return found[1]


def _request(**fields: Any) -> ChatRequest:
    body: dict[str, Any] = {
        "model": "chat",
        "messages": [{"role": "user", "content": "hello"}],
        "temperature": 0,
    }
    body.update(fields)
    return ChatRequest.model_validate(body)


def _job(request: ChatRequest, tenant: str | None = "acme") -> tuple[ChatJob, RecordingReplies]:
    replies = RecordingReplies()
    return ChatJob(request=request, replies=replies, tenant=tenant), replies  # type: ignore[arg-type]


def _cache(
    registry: CollectorRegistry,
    store: Any = None,
    clock: Clock | None = None,
    **settings: Any,
) -> ResponseCache:
    clock = clock or Clock()
    return ResponseCache(
        store or MemoryStore(max_entries=100, max_bytes=1 << 20, clock=clock),
        ResponseCacheSettings(**settings),
        _metrics(registry).response_cache,
        backend="memory",
        breaker=Breaker("response-cache", fail_max=2, reset_timeout=60, clock=clock),
        clock=clock,
    )


def _service(
    model: CountingModel,
    cache: ResponseCache,
    registry: CollectorRegistry,
    endpoint: str | None = None,
    **route: Any,
) -> ChatService:
    resolver = ModelResolver({"scripted": model}, {})
    deployment = {"provider": "scripted", "model": "m", "endpoint": endpoint}
    config = RoutingConfig.model_validate(
        {
            "deployments": {"d": {k: v for k, v in deployment.items() if v is not None}},
            "routes": {"chat": {"deployments": ["d"], **route}},
        }
    )
    service = ChatService(resolver, _metrics(registry), response_cache=cache)
    service.apply_routing(build_table(config, resolver, lambda _: None))
    return service


def _lookups(registry: CollectorRegistry, outcome: str) -> float:
    value = registry.get_sample_value(
        "llm_worker_response_cache_lookups_total", {"target": "chat", "outcome": outcome}
    )
    return value or 0.0


def _skips(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value("llm_worker_response_cache_skips_total", {"reason": reason})
    return value or 0.0


# --- policy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "request_fields", "tenant", "applies", "skip"),
    [
        ({}, {}, "acme", False, None),  # off by default
        ({"enabled": True}, {}, "acme", True, None),
        ({"enabled": True}, {"response_cache": {"use": False}}, "acme", False, None),
        ({}, {"response_cache": {}}, "acme", True, None),  # per request
        ({"enabled": True}, {"temperature": None}, "acme", False, "sampled"),
        ({"enabled": True}, {"temperature": 0.7}, "acme", False, "sampled"),
        ({"enabled": True}, {"temperature": 0.7, "seed": 3}, "acme", True, None),
        ({"enabled": True, "cache_sampled": True}, {"temperature": None}, "acme", True, None),
        ({"enabled": True}, {}, None, False, "no_tenant"),
        ({"enabled": True}, {}, "", False, "no_tenant"),
        (
            {"enabled": True},
            {"tools": [{"type": "mcp", "server": "files"}], "tool_execution": {"mode": "auto"}},
            "acme",
            False,
            "tool_loop",
        ),
    ],
)
def test_the_policy_table(
    route: dict[str, Any],
    request_fields: dict[str, Any],
    tenant: str | None,
    applies: bool,
    skip: str | None,
) -> None:
    registry = CollectorRegistry()
    cache = _cache(registry)
    job, _ = _job(_request(**request_fields), tenant)
    decision = cache.policy(
        job, Route.model_validate({"deployments": ["d"], "response_cache": route}), "chat"
    )
    assert (decision is not None) is applies
    if skip is not None:
        assert _skips(registry, skip) == 1


def test_a_presigned_image_url_from_a_dataref_is_not_cached() -> None:
    registry = CollectorRegistry()
    cache = _cache(registry)
    sent = _request(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "dataref", "dataref": {"key": "k.png"}},
                ],
            }
        ]
    )
    resolved = _request(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://s3/k.png?X-Amz-Signature=1"},
                    },
                ],
            }
        ]
    )
    job = ChatJob(request=resolved, replies=RecordingReplies(), tenant="acme", unresolved=sent)  # type: ignore[arg-type]
    route = Route.model_validate({"deployments": ["d"], "response_cache": {"enabled": True}})
    assert cache.policy(job, route, "chat") is None
    assert _skips(registry, "presigned") == 1


@pytest.mark.parametrize(
    ("request_ttl", "route_ttl", "route_max", "expected"),
    [
        (None, None, None, 3600),  # the worker's default
        (None, 600, None, 600),
        (30, 600, None, 30),
        (5000, 600, 1000, 1000),  # capped by the route
        (None, None, 100, 100),
        (200_000, None, None, 86_400),  # capped by the worker
    ],
)
def test_ttl_precedence(
    request_ttl: int | None, route_ttl: int | None, route_max: int | None, expected: int
) -> None:
    cache = _cache(CollectorRegistry())
    options = {"ttl": request_ttl} if request_ttl else {}
    job, _ = _job(_request(response_cache=options))
    config = {"enabled": True, "ttl": route_ttl, "max_ttl": route_max}
    route = Route.model_validate({"deployments": ["d"], "response_cache": config})
    decision = cache.policy(job, route, "chat")
    assert decision is not None
    assert decision.ttl == expected


# --- memory store ---------------------------------------------------------------------------


async def test_the_memory_store_is_an_lru_bounded_in_entries_and_bytes() -> None:
    store = MemoryStore(max_entries=2, max_bytes=1 << 20, clock=Clock())
    await store.put("ferryman:rc:v1:a", b"1", 60)
    await store.put("ferryman:rc:v1:b", b"2", 60)
    assert await store.get(["ferryman:rc:v1:a"]) == [b"1"]  # a is now the most recent
    await store.put("ferryman:rc:v1:c", b"3", 60)
    assert await store.get(["ferryman:rc:v1:a", "ferryman:rc:v1:b", "ferryman:rc:v1:c"]) == [
        b"1",
        None,
        b"3",
    ]
    sized = MemoryStore(max_entries=100, max_bytes=10, clock=Clock())
    await sized.put("k1", b"x" * 6, 60)
    await sized.put("k2", b"y" * 6, 60)
    assert await sized.get(["k1", "k2"]) == [None, b"y" * 6]
    assert sized.held_bytes == 6
    await sized.put("huge", b"z" * 11, 60)
    assert len(sized) == 1


async def test_memory_entries_expire_on_their_own_ttl() -> None:
    clock = Clock()
    store = MemoryStore(max_entries=10, max_bytes=1 << 20, clock=clock)
    await store.put("short", b"s", 1)
    await store.put("long", b"l", 100)
    clock.now += 1
    assert await store.get(["short", "long"]) == [None, b"l"]
    assert len(store) == 1


async def test_memory_invalidation_spares_answers_stored_after_the_event() -> None:
    clock = Clock()
    store = MemoryStore(max_entries=10, max_bytes=1 << 20, clock=clock)
    await store.put("ferryman:rc:v1:acme/docs/x", b"old", 100)
    await store.put("ferryman:rc:v1:acme/other/x", b"kept", 100)
    await store.put("ferryman:rc:v1:globex/docs/x", b"theirs", 100)
    event_time = datetime.fromtimestamp(clock.now + 5, UTC)
    clock.now += 10
    await store.put("ferryman:rc:v1:acme/docs/y", b"new", 100)
    assert await store.invalidate("acme/docs/", event_time, "ev-1") == 1
    assert await store.invalidate("acme/docs/", event_time, "ev-1") == 0  # replayed: no-op
    keys = ["acme/docs/x", "acme/other/x", "globex/docs/x", "acme/docs/y"]
    found = await store.get(["ferryman:rc:v1:" + k for k in keys])
    assert found == [None, b"kept", b"theirs", b"new"]


# --- through the chat service ------------------------------------------------------------


async def test_a_hit_replays_the_same_chunks_and_a_cached_completed() -> None:
    registry = CollectorRegistry()
    model = CountingModel(["Hel", "lo ", "there"])
    cache = _cache(registry)
    service = _service(model, cache, registry, response_cache={"enabled": True})
    first, first_replies = _job(_request())
    await service.execute(first)
    await cache.drain()
    second, second_replies = _job(_request())
    await service.execute(second)

    assert model.calls == 1
    assert first_replies.of_type(LLM_CHAT_CHUNK) == second_replies.of_type(LLM_CHAT_CHUNK)
    assert [c["delta"]["content"] for c in second_replies.of_type(LLM_CHAT_CHUNK)] == [
        "Hel",
        "lo ",
        "there",
    ]
    fresh = first_replies.of_type(LLM_CHAT_COMPLETED)[0]
    hit = second_replies.of_type(LLM_CHAT_COMPLETED)[0]
    assert "cached" not in fresh
    assert hit["cached"] is True
    assert hit["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert (
        hit["original_usage"]
        == fresh["usage"]
        == {
            "input_tokens": 12,
            "output_tokens": 3,
            "cached_input_tokens": 4,
        }
    )
    assert hit["content"] == fresh["content"] == "Hello there"
    assert hit["chunk_count"] == 3
    assert hit["attempts"] == []
    assert (hit["deployment"], hit["provider"], hit["model"]) == ("d", "scripted", "m")
    assert "cached_at" in hit
    assert _lookups(registry, "miss") == 1
    assert _lookups(registry, "hit") == 1
    stored = registry.get_sample_value(
        "llm_worker_response_cache_bytes_total", {"direction": "stored"}
    )
    served = registry.get_sample_value(
        "llm_worker_response_cache_bytes_total", {"direction": "served"}
    )
    assert stored is not None
    assert stored == served
    assert stored > 0
    assert registry.get_sample_value("llm_worker_response_cache_entries") == 1


async def test_an_answer_generated_without_streaming_replays_as_a_stream() -> None:
    registry = CollectorRegistry()
    model = CountingModel(["a", "b"])
    cache = _cache(registry)
    service = _service(model, cache, registry, response_cache={"enabled": True})
    job, replies = _job(_request(stream=False))
    await service.execute(job)
    await cache.drain()
    assert replies.types() == [LLM_CHAT_COMPLETED]
    job, replies = _job(_request(stream=True))
    await service.execute(job)
    assert model.calls == 1
    assert [c["delta"] for c in replies.of_type(LLM_CHAT_CHUNK)] == [{"content": "ab"}]
    job, replies = _job(_request(stream=False))
    await service.execute(job)
    assert replies.types() == [LLM_CHAT_COMPLETED]
    assert replies.of_type(LLM_CHAT_COMPLETED)[0]["chunk_count"] == 0


async def test_tenants_never_share_an_answer() -> None:
    registry = CollectorRegistry()
    model = CountingModel(["x"])
    cache = _cache(registry)
    service = _service(model, cache, registry, response_cache={"enabled": True})
    for tenant in ("acme", "globex", "acme"):
        job, _ = _job(_request(), tenant)
        await service.execute(job)
        await cache.drain()
    assert model.calls == 2


async def test_deployments_differing_only_in_endpoint_never_share_an_answer() -> None:
    registry = CollectorRegistry()
    model = CountingModel(["x"])
    cache = _cache(registry)
    services = {
        endpoint: _service(model, cache, registry, endpoint, response_cache={"enabled": True})
        for endpoint in ("http://gpu-a.test/v1", "http://gpu-b.test/v1", None)
    }
    for endpoint in ("http://gpu-a.test/v1", "http://gpu-b.test/v1", None, "http://gpu-a.test/v1"):
        job, _ = _job(_request())
        await services[endpoint].execute(job)
        await cache.drain()
    assert model.calls == 3
    assert _lookups(registry, "hit") == 1


async def test_refresh_skips_the_lookup_and_stores_the_fresh_answer() -> None:
    registry = CollectorRegistry()
    model = CountingModel(["x"])
    cache = _cache(registry)
    service = _service(model, cache, registry, response_cache={"enabled": True})
    for options in ({}, {"refresh": True}, {}):
        job, _ = _job(_request(response_cache=options))
        await service.execute(job)
        await cache.drain()
    assert model.calls == 2
    assert _lookups(registry, "hit") == 1


async def test_an_unfinished_or_too_large_answer_is_not_stored() -> None:
    registry = CollectorRegistry()
    model = CountingModel(["x"], finish="content_filter")
    cache = _cache(registry)
    service = _service(model, cache, registry, response_cache={"enabled": True})
    for _ in range(2):
        job, _ = _job(_request())
        await service.execute(job)
        await cache.drain()
    assert model.calls == 2
    assert _skips(registry, "unfinished") == 2

    big = CountingModel(["y" * 2000])
    cache = _cache(registry := CollectorRegistry(), max_entry_bytes=1024)
    service = _service(big, cache, registry, response_cache={"enabled": True})
    for _ in range(2):
        job, _ = _job(_request())
        await service.execute(job)
        await cache.drain()
    assert big.calls == 2
    assert _skips(registry, "too_large") == 2


async def test_a_failing_backend_is_a_miss_and_opens_the_breaker() -> None:
    registry = CollectorRegistry()
    model = CountingModel(["x"])
    store = BrokenStore()
    cache = _cache(registry, store=store)
    service = _service(model, cache, registry, response_cache={"enabled": True})
    for _ in range(4):
        job, replies = _job(_request())
        await service.execute(job)
        await cache.drain()
        assert replies.of_type(LLM_CHAT_COMPLETED)[0]["content"] == "x"
    assert model.calls == 4
    assert _lookups(registry, "error") == 4
    assert store.calls == 2  # get, put: then the breaker (fail_max 2) is open
    assert cache.status()["breaker"] == "open"
    errors = registry.get_sample_value(
        "llm_worker_response_cache_errors_total", {"operation": "get"}
    )
    assert errors == 4


async def test_a_slow_backend_is_a_miss_after_the_lookup_timeout() -> None:
    registry = CollectorRegistry()
    model = CountingModel(["x"])
    cache = _cache(registry, store=BrokenStore(hang=True), lookup_timeout=0.01)
    service = _service(model, cache, registry, response_cache={"enabled": True})
    job, replies = _job(_request())
    await service.execute(job)
    assert replies.of_type(LLM_CHAT_COMPLETED)[0]["content"] == "x"
    assert _lookups(registry, "error") == 1


async def test_invalidation_by_tenant_and_prefix() -> None:
    registry = CollectorRegistry()
    clock = Clock()
    model = CountingModel(["x"])
    cache = _cache(registry, clock=clock)
    service = _service(model, cache, registry, response_cache={"enabled": True})
    for tenant, namespace in (("acme", "docs"), ("acme", "blog"), ("globex", "docs")):
        job, _ = _job(_request(response_cache={"namespace": namespace}), tenant)
        await service.execute(job)
    await cache.drain()
    clock.now += 1
    at = datetime.fromtimestamp(clock.now, UTC)
    dropped = await cache.invalidate(CacheInvalidation(tenant="acme", prefix="docs/"), at, "e1")
    assert dropped == 1
    assert await cache.invalidate(CacheInvalidation(all=True), at, "e2") == 2
    scope = {"scope": "tenant"}
    assert registry.get_sample_value("llm_worker_response_cache_invalidations_total", scope) == 1
    broken = _cache(reg := CollectorRegistry(), store=BrokenStore())
    assert await broken.invalidate(CacheInvalidation(all=True), at, "e3") == 0
    failed = {"operation": "invalidate"}
    assert reg.get_sample_value("llm_worker_response_cache_errors_total", failed) == 1


async def test_the_usage_event_says_hit_or_stored() -> None:
    registry = CollectorRegistry()
    model = CountingModel(["x"])
    cache = _cache(registry)
    events: list[Any] = []

    class Sink:
        def record(self, event: Any) -> None:
            events.append(event)

    resolver = ModelResolver({"scripted": model}, {})
    config = RoutingConfig.model_validate(
        {
            "deployments": {"d": {"provider": "scripted", "model": "m"}},
            "routes": {"chat": {"deployments": ["d"], "response_cache": {"enabled": True}}},
        }
    )
    service = ChatService(resolver, _metrics(registry), usage=Sink(), response_cache=cache)
    service.apply_routing(build_table(config, resolver, lambda _: None))
    for _ in range(2):
        job, _ = _job(_request())
        await service.execute(job)
        await cache.drain()
    assert [e.response_cache for e in events] == ["stored", "hit"]
    assert (events[1].input_tokens, events[1].output_tokens) == (0, 0)
    assert events[1].model == "scripted/m"


# --- the Redis store ----------------------------------------------------------------------


class UnlinkFailsOnce(RedisStore):
    """A Redis store whose first `UNLINK` fails, after the scan has found keys (Redis
    going away part-way through an invalidation)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.failed = False

    async def _unlink(self, keys: list[bytes]) -> int:
        if not self.failed:
            self.failed = True
            raise ConnectionError("redis went away")
        return await super()._unlink(keys)


async def test_a_redis_invalidation_failing_part_way_leaves_no_marker_so_a_retry_acts(
    redis_url: str, unique: str
) -> None:
    tenant = f"t-{unique}/"
    keys = [f"{KEY_PREFIX}{tenant}ns/openai/m/{n}" for n in range(3)]
    before = datetime(2099, 1, 1, tzinfo=UTC)
    failing, store = UnlinkFailsOnce(redis_url), RedisStore(redis_url)
    client = aioredis.Redis.from_url(redis_url)  # pyright: ignore[reportUnknownMemberType]
    try:
        for key in keys:
            await store.put(key, b"answer", 60)

        with pytest.raises(ConnectionError):
            await failing.invalidate(tenant, before, f"event-{unique}")

        assert failing.failed
        assert await client.exists(INVALIDATION_MARKER + f"event-{unique}") == 0
        assert await store.invalidate(tenant, before, f"event-{unique}") == 3
        assert await store.get(keys) == [None, None, None]
        assert await store.invalidate(tenant, before, f"event-{unique}") == 0  # done once
    finally:
        await client.aclose()
        await failing.aclose()
        await store.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "redis://:pa/ss-s3cret@cache.test:6379/0",
        "redis://:pa#ss-s3cret@cache.test:6379/0",
        "redis://:pa?ss-s3cret@cache.test:6379/0",
    ],
)
def test_a_malformed_redis_url_is_refused_without_quoting_its_password(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_WORKER_RESPONSE_CACHE__BACKEND", "redis")
    monkeypatch.setenv("LLM_WORKER_RESPONSE_CACHE__REDIS_URL", url)

    with pytest.raises(ValueError, match="not a valid Redis URL") as refused:
        build_response_cache(LlmWorkerSettings(), _metrics(CollectorRegistry()))

    message = str(refused.value)
    assert "'pa" not in message  # the parser's error quotes the password's start
    assert "s3cret" not in message
    assert message.startswith("LLM_WORKER_RESPONSE_CACHE__REDIS_URL is not")
    assert refused.value.__cause__ is None
    assert refused.value.__suppress_context__  # `from None`: no chained parser error
