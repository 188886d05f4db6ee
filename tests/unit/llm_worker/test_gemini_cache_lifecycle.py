"""Gemini cached contents: create, reuse, refresh, expiry, recreate, idle delete, eviction,
shutdown and storage cost, driving the real `google-genai` SDK against the fake server.

The registry and the fake share one manual clock (`Clock`), so expiry is a number the test
moves; the sweeper test runs on virtual time instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from ferryman.contracts.llm import Usage
from ferryman.contracts.usage import UsageEvent
from llm_worker.chat.streaming import fold
from llm_worker.metrics import watch_gemini_caches
from llm_worker.providers.call_context import CallContext, call_context
from llm_worker.providers.gemini import GeminiChatModel, create_client
from llm_worker.providers.gemini_cache import GeminiCacheSettings
from tests.fakes.gemini_server import FakeGemini, RecordedRequest, Scenario
from tests.virtual_time import on_virtual_time

API_KEY = "AIza-test-SECRET-key-0042"
MODEL = "gemini-2.5-flash"
SYSTEM = " ".join(f"rule{i}" for i in range(300))
"""300 words (the fake's tokens), about 600 estimated tokens: above the test minimum."""
TENANT_A, TENANT_B = "acme-corp", "globex-inc"


class Clock:
    """A clock the test moves (seconds)."""

    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Sink:
    """A usage sink that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[UsageEvent] = []

    def record(self, event: UsageEvent) -> None:
        self.events.append(event)

    def storage_hours(self) -> float:
        return sum(e.cache_storage_token_hours for e in self.events)


def _request(user: str = "What now?", system: str = SYSTEM, **fields: Any) -> ChatRequest:
    messages = [
        {"role": "system", "content": system, "cache_control": {"type": "ephemeral"}},
        {"role": "user", "content": user},
    ]
    return ChatRequest.model_validate({"model": f"gemini/{MODEL}", "messages": messages, **fields})


Maker = Callable[..., GeminiChatModel]


@contextlib.asynccontextmanager
async def _serving(clock: Clock | None) -> AsyncIterator[tuple[FakeGemini, Maker]]:
    fake = FakeGemini()
    fake.caches.clock = clock
    await fake.start()
    models: list[GeminiChatModel] = []

    def make(api_version: str = "v1", **settings: Any) -> GeminiChatModel:
        client = create_client(
            api_key=API_KEY, base_url=fake.base_url, api_version=api_version, timeout=10.0
        )
        cache = GeminiCacheSettings(**{"min_tokens": {"*": 100}, **settings})
        models.append(GeminiChatModel(client, cache=cache, clock=clock))
        return models[-1]

    try:
        yield fake, make
    finally:
        for model in models:
            await model.aclose()
        await fake.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def serving(clock: Clock) -> AsyncIterator[tuple[FakeGemini, Maker]]:
    async with _serving(clock) as both:
        yield both


@pytest.fixture
def fake(serving: tuple[FakeGemini, Maker]) -> FakeGemini:
    return serving[0]


@pytest.fixture
def make_model(serving: tuple[FakeGemini, Maker]) -> Maker:
    return serving[1]


async def _ask(
    model: GeminiChatModel,
    request: ChatRequest,
    *,
    tenant: str | None = TENANT_A,
    sink: Sink | None = None,
    request_id: str = "req-1",
) -> Usage:
    with call_context(CallContext(tenant, request_id, sink)):
        return (await fold(model.stream(request, MODEL))).usage


def _names(requests: list[RecordedRequest]) -> list[str]:
    return [str(r.body.get("cachedContent")) for r in requests]


# --- create and the wire form ----------------------------------------------------------------


async def test_concurrent_first_uses_create_one_cached_content_on_v1beta(
    fake: FakeGemini, make_model: Maker
) -> None:
    model = make_model()
    sink = Sink()

    usages = await asyncio.gather(*(_ask(model, _request(f"q{i}"), sink=sink) for i in range(5)))

    [create] = fake.cache_requests("POST")
    assert create.path == "/v1beta/cachedContents"
    assert create.headers["x-goog-api-key"] == API_KEY
    assert set(create.body) == {"model", "systemInstruction", "ttl", "displayName"}
    assert create.body["model"] == f"models/{MODEL}"
    assert create.body["ttl"] == "300s"
    assert create.body["systemInstruction"] == {"parts": [{"text": SYSTEM}]}
    assert create.body["displayName"].startswith("ferryman-")
    assert TENANT_A not in str(create.body)
    [name] = [c.name for c in fake.caches.alive()]
    calls = fake.generate_requests()
    assert len(calls) == 5
    for call in calls:
        assert call.path == f"/v1beta/models/{MODEL}:streamGenerateContent"
        assert call.body["cachedContent"] == name
        assert not {"systemInstruction", "tools", "toolConfig"} & call.body.keys()
        assert next(c["parts"][0]["text"] for c in call.body["contents"]).startswith("q")
    tokens = 300
    writes = [u for u in usages if u.cache_write_tokens is not None]
    assert [u.cache_write_tokens for u in writes] == [tokens], "one call wrote the cache"
    assert all(u.cached_input_tokens == tokens for u in usages)
    # "q0" is 1 token; the writer's input also counts the write (priced as such).
    assert writes[0].input_tokens == 1 + tokens + tokens
    assert sorted(u.input_tokens for u in usages if u.cache_write_tokens is None) == [301] * 4
    assert model.cache_stats().cached_contents == 1
    assert model.cache_stats().operations == {("create", "ok"): 1}


async def test_a_request_without_breakpoints_is_sent_uncached_on_the_clients_version(
    fake: FakeGemini, make_model: Maker
) -> None:
    model = make_model()
    request = ChatRequest.model_validate(
        {"model": "gemini/x", "messages": [{"role": "system", "content": SYSTEM},
                                           {"role": "user", "content": "hi"}]}
    )  # fmt: skip

    usage = await _ask(model, request)

    assert fake.cache_requests() == []
    [call] = fake.generate_requests()
    assert call.path == f"/v1/models/{MODEL}:streamGenerateContent"
    assert "cachedContent" not in call.body
    assert "systemInstruction" in call.body
    assert usage.cache_write_tokens is None
    assert usage.cached_input_tokens is None


async def test_a_client_on_v1beta_sends_cache_calls_on_its_own_version(
    fake: FakeGemini, make_model: Maker
) -> None:
    model = make_model(api_version="v1beta")

    await _ask(model, _request())

    assert [r.path for r in fake.cache_requests()] == ["/v1beta/cachedContents"]
    assert fake.generate_requests()[0].path.startswith("/v1beta/")


async def test_a_marked_message_caches_the_turns_up_to_it_and_sends_the_rest(
    fake: FakeGemini, make_model: Maker
) -> None:
    model = make_model()
    document = " ".join(f"w{i}" for i in range(200))
    request = ChatRequest.model_validate(
        {
            "model": "gemini/x",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": document, "cache_control": {"ttl": "1h"}}]},
                {"role": "assistant", "content": "Read it."},
                {"role": "user", "content": "Summarise."},
            ],
        }
    )  # fmt: skip

    await _ask(model, request)

    [create] = fake.cache_requests("POST")
    assert create.body["ttl"] == "3600s"  # a 1h breakpoint: the long ttl
    assert create.body["contents"] == [{"role": "user", "parts": [{"text": document}]}]
    assert create.body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    [call] = fake.generate_requests()
    assert call.body["contents"] == [
        {"role": "model", "parts": [{"text": "Read it."}]},
        {"role": "user", "parts": [{"text": "Summarise."}]},
    ]


async def test_tools_and_tool_config_go_into_the_cached_content(
    fake: FakeGemini, make_model: Maker
) -> None:
    model = make_model()
    tool = {
        "type": "function",
        "function": {"name": "lookup", "description": "Look up.", "parameters": {
            "type": "object", "properties": {"q": {"type": "string"}}}},
    }  # fmt: skip
    request = _request(tools=[tool], tool_choice="required", prompt_cache={"tools": {}})

    await _ask(model, request)

    [create] = fake.cache_requests("POST")
    assert create.body["tools"][0]["functionDeclarations"][0]["name"] == "lookup"
    assert create.body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    [call] = fake.generate_requests()
    assert not {"systemInstruction", "tools", "toolConfig"} & call.body.keys()


# --- reuse -----------------------------------------------------------------------------------


async def test_the_same_prefix_is_reused_and_another_prefix_or_tenant_gets_its_own(
    fake: FakeGemini, make_model: Maker
) -> None:
    model = make_model()

    first = await _ask(model, _request("one"))
    again = await _ask(model, _request("two"))
    other_tenant = await _ask(model, _request("three"), tenant=TENANT_B)
    other_prefix = await _ask(model, _request("four", system=SYSTEM + " extra"))

    assert len(fake.cache_requests("POST")) == 3
    names = _names(fake.generate_requests())
    assert names[0] == names[1]
    assert len(set(names)) == 3, "tenants and prefixes never share a cached content"
    assert first.cache_write_tokens == 300
    assert again.cache_write_tokens is None
    assert other_tenant.cache_write_tokens == 300
    assert other_prefix.cache_write_tokens == 301
    assert not any(t in str(r.body) for r in fake.requests for t in (TENANT_A, TENANT_B))


async def test_generate_uses_the_cached_content_too(fake: FakeGemini, make_model: Maker) -> None:
    model = make_model()

    with call_context(CallContext(TENANT_A, "req-1")):
        completion = await model.generate(_request("hi"), MODEL)

    [call] = fake.generate_requests()
    assert call.path == f"/v1beta/models/{MODEL}:generateContent"
    assert call.body["cachedContent"] == fake.caches.alive()[0].name
    assert completion.usage.cache_write_tokens == 300


# --- refresh, expiry, recreate ---------------------------------------------------------------


async def test_an_entry_used_in_the_second_half_of_its_ttl_is_refreshed(
    fake: FakeGemini, make_model: Maker, clock: Clock
) -> None:
    model = make_model()
    sink = Sink()
    await _ask(model, _request("a"), sink=sink)
    clock.advance(100)  # 200 s left of 300: no refresh
    await _ask(model, _request("b"))
    await model.context_cache.drain()
    assert fake.cache_requests("PATCH") == []

    clock.advance(60)  # 140 s left: refreshed in the background
    await _ask(model, _request("c"))
    await model.context_cache.drain()

    [patch] = fake.cache_requests("PATCH")
    name = fake.caches.alive()[0].name
    assert patch.path == f"/v1beta/{name}"
    assert patch.body == {"ttl": "300s"}
    # Storage is accounted up to the refresh: 300 tokens for 160 s.
    assert sink.storage_hours() == pytest.approx(300 * 160 / 3600)
    clock.advance(200)  # past the first expiry, within the refreshed one
    await _ask(model, _request("d"))  # 100 s left: refreshed again
    await model.context_cache.drain()
    assert len(fake.cache_requests("POST")) == 1
    assert _names(fake.generate_requests())[-1] == name
    assert model.cache_stats().operations == {("create", "ok"): 1, ("update", "ok"): 2}


async def test_an_entry_used_inside_its_margin_is_extended_before_the_call(
    fake: FakeGemini, make_model: Maker, clock: Clock
) -> None:
    model = make_model(idle=1000.0)
    await _ask(model, _request("a"))
    clock.advance(250)  # 50 s left: under the 60 s margin

    await _ask(model, _request("b"))

    assert len(fake.cache_requests("PATCH")) == 1
    assert len(fake.cache_requests("POST")) == 1
    assert fake.generate_requests()[-1].body["cachedContent"] == fake.caches.alive()[0].name


async def test_the_first_token_timeout_widens_the_margin(
    fake: FakeGemini, make_model: Maker, clock: Clock
) -> None:
    model = make_model()
    await _ask(model, _request("a"))
    clock.advance(150)  # 150 s left, more than 60 s but less than a 200 s first-token wait

    with call_context(CallContext(TENANT_A, "req-2", None, first_token_timeout=200.0)):
        await fold(model.stream(_request("b"), MODEL))

    assert len(fake.cache_requests("PATCH")) == 1


async def test_an_expired_entry_is_recreated_on_use_and_billed_until_it_expired(
    fake: FakeGemini, make_model: Maker, clock: Clock
) -> None:
    model = make_model()
    sink = Sink()
    await _ask(model, _request("a"), sink=sink)
    clock.advance(400)

    usage = await _ask(model, _request("b"), sink=sink)

    creates = fake.cache_requests("POST")
    assert len(creates) == 2
    first, second = _names(fake.generate_requests())
    assert first != second
    assert second == fake.caches.alive()[0].name
    assert usage.cache_write_tokens == 300
    assert sink.storage_hours() == pytest.approx(300 * 300 / 3600)
    [storage] = [e for e in sink.events if e.operation == "prompt_cache_storage"]
    assert (storage.tenant, storage.request_id, storage.model) == (
        TENANT_A,
        "req-1",
        f"gemini/{MODEL}",
    )
    assert storage.input_tokens == 0
    assert storage.outcome == "completed"
    assert model.cache_stats().operations == {("create", "ok"): 1, ("recreate", "ok"): 1}


@pytest.mark.parametrize("status", [403, 404])
async def test_a_cached_content_gone_mid_use_is_recreated_and_the_call_retried_once(
    fake: FakeGemini, make_model: Maker, status: int
) -> None:
    model = make_model()
    fake.caches.missing_status = status
    await _ask(model, _request("a"))
    for item in fake.caches.alive():  # deleted behind the worker's back
        item.deleted = True

    usage = await _ask(model, _request("b"))

    calls = fake.generate_requests()
    assert len(calls) == 3  # a, b refused, b retried
    assert calls[1].body["cachedContent"] != calls[2].body["cachedContent"]
    assert calls[2].body["cachedContent"] == fake.caches.alive()[0].name
    assert usage.cache_write_tokens == 300
    assert model.cache_stats().operations[("recreate", "ok")] == 1


async def test_the_retry_after_a_gone_cached_content_happens_only_once(
    fake: FakeGemini, make_model: Maker
) -> None:
    model = make_model()
    await _ask(model, _request("a"))
    fake.scenarios[MODEL] = Scenario(status=403)  # every generate call is now refused

    with pytest.raises(FerrymanError) as failure, call_context(CallContext(TENANT_A, "req-2")):
        await model.generate(_request("b"), MODEL)

    assert failure.value.code is ErrorCode.PERMISSION_DENIED
    assert len(fake.generate_requests()) == 3  # a, then b and its one retry
    assert len(fake.cache_requests("POST")) == 2


# --- negative cache and failures -------------------------------------------------------------


async def test_a_too_small_prefix_is_sent_uncached_and_not_tried_again_within_the_ttl(
    fake: FakeGemini, make_model: Maker, clock: Clock
) -> None:
    model = make_model()
    fake.caches.min_tokens = 1024  # the fake counts 300

    usage = await _ask(model, _request("a"))
    await _ask(model, _request("b"))

    assert len(fake.cache_requests("POST")) == 1
    for call in fake.generate_requests():
        assert call.path.startswith("/v1/")
        assert "cachedContent" not in call.body
        assert call.body["systemInstruction"] == {"parts": [{"text": SYSTEM}]}
    assert usage.cache_write_tokens is None
    assert model.cache_stats().operations == {("create", "too_small"): 1}
    clock.advance(301)
    await _ask(model, _request("c"))
    assert len(fake.cache_requests("POST")) == 2


async def test_a_prefix_estimated_below_the_models_minimum_makes_no_create_call(
    fake: FakeGemini, make_model: Maker
) -> None:
    model = make_model(min_tokens={"gemini-2.5-*": 5000})

    await _ask(model, _request("a"))

    assert fake.cache_requests() == []
    assert "cachedContent" not in fake.generate_requests()[0].body


async def test_the_deployments_minimum_comes_before_the_workers_table(
    fake: FakeGemini, make_model: Maker
) -> None:
    model = make_model()  # the worker's table lets every prefix through

    with call_context(CallContext(TENANT_A, "req-1", None, min_cache_tokens=5000)):
        await fold(model.stream(_request("a"), MODEL))
    assert fake.cache_requests() == []  # the deployment's `prompt_cache.min_tokens` won

    await _ask(model, _request("a"))  # no deployment minimum: the table's applies
    assert len(fake.cache_requests()) == 1


async def test_a_failed_create_never_fails_the_request(fake: FakeGemini, make_model: Maker) -> None:
    model = make_model()
    fake.caches.create_status = 503

    usage = await _ask(model, _request("a"))

    assert usage.output_tokens > 0
    assert "cachedContent" not in fake.generate_requests()[0].body
    assert model.cache_stats().operations == {("create", "unavailable"): 1}
    assert model.cache_stats().cached_contents == 0


async def test_a_slow_create_sends_the_call_uncached_and_a_later_call_reuses_it(
    fake: FakeGemini, make_model: Maker
) -> None:
    model = make_model(wait_budget=0.05)
    release = fake.caches.hold["POST"] = asyncio.Event()

    async with asyncio.timeout(10):  # without the budget the call waits for the create
        usage = await _ask(model, _request("a"))

    [first] = fake.generate_requests()
    assert "cachedContent" not in first.body
    assert first.body["systemInstruction"] == {"parts": [{"text": SYSTEM}]}
    assert usage.cache_write_tokens is None
    assert fake.caches.alive() == []
    release.set()  # the create went on in the background
    await model.context_cache.drain()
    [name] = [c.name for c in fake.caches.alive()]

    await _ask(model, _request("b"))

    assert len(fake.cache_requests("POST")) == 1
    assert fake.generate_requests()[-1].body["cachedContent"] == name


async def test_the_wait_for_a_create_is_a_quarter_of_the_first_token_timeout_at_most(
    fake: FakeGemini, make_model: Maker
) -> None:
    model = make_model()  # the default budget: 5 s
    fake.caches.hold["POST"] = asyncio.Event()

    async with asyncio.timeout(2):
        with call_context(CallContext(TENANT_A, "req-1", None, first_token_timeout=0.2)):
            await fold(model.stream(_request("a"), MODEL))

    assert "cachedContent" not in fake.generate_requests()[0].body


async def test_a_slow_refresh_inside_the_margin_sends_the_call_uncached_and_keeps_the_entry(
    fake: FakeGemini, make_model: Maker, clock: Clock
) -> None:
    model = make_model(idle=1000.0, wait_budget=0.05)
    await _ask(model, _request("a"))
    [name] = [c.name for c in fake.caches.alive()]
    clock.advance(250)  # 50 s left: under the 60 s margin, so refreshed before the call
    release = fake.caches.hold["PATCH"] = asyncio.Event()

    async with asyncio.timeout(10):
        await _ask(model, _request("b"))

    assert "cachedContent" not in fake.generate_requests()[-1].body
    release.set()
    await model.context_cache.drain()
    await _ask(model, _request("c"))

    assert len(fake.cache_requests("PATCH")) == 1
    assert len(fake.cache_requests("POST")) == 1, "the entry was extended, not recreated"
    assert fake.generate_requests()[-1].body["cachedContent"] == name


# --- delete: idle, eviction, shutdown --------------------------------------------------------


async def test_idle_entries_are_deleted_and_billed_until_then(
    fake: FakeGemini, make_model: Maker, clock: Clock
) -> None:
    model = make_model()
    sink = Sink()
    await _ask(model, _request("a"), sink=sink)
    clock.advance(100)
    await model.context_cache.sweep()
    assert fake.cache_requests("DELETE") == []

    clock.advance(21)
    await model.context_cache.sweep()

    [delete] = fake.cache_requests("DELETE")
    assert delete.path == f"/v1beta/{_names(fake.generate_requests())[0]}"
    assert fake.caches.alive() == []
    assert model.cache_stats().cached_contents == 0
    assert sink.storage_hours() == pytest.approx(300 * 121 / 3600)


async def test_the_least_recently_used_entry_is_deleted_above_the_bound(
    fake: FakeGemini, make_model: Maker
) -> None:
    model = make_model(max_entries=2)

    for n in range(3):
        await _ask(model, _request("q", system=f"{SYSTEM} v{n}"))
    await model.context_cache.drain()

    first = _names(fake.generate_requests())[0]
    assert [r.path for r in fake.cache_requests("DELETE")] == [f"/v1beta/{first}"]
    assert len(fake.caches.alive()) == 2
    assert first not in model.context_cache.names()


async def test_aclose_deletes_every_entry(fake: FakeGemini, clock: Clock) -> None:
    client = create_client(api_key=API_KEY, base_url=fake.base_url, timeout=10.0)
    model = GeminiChatModel(client, cache=GeminiCacheSettings(min_tokens={"*": 1}), clock=clock)
    sink = Sink()
    await _ask(model, _request("a"), sink=sink)
    await _ask(model, _request("a", system="short system prompt"), sink=sink)
    clock.advance(30)

    await model.aclose()

    assert len(fake.cache_requests("DELETE")) == 2
    assert fake.caches.alive() == []
    assert sink.storage_hours() == pytest.approx((300 + 3) * 30 / 3600)
    assert model.cache_stats().cached_contents == 0


@on_virtual_time
async def test_the_sweeper_starts_on_first_use_and_deletes_idle_entries_on_its_own() -> None:
    async with _serving(None) as (fake, make_model):  # everything on the loop's virtual clock
        model = make_model()
        loop = asyncio.get_running_loop()
        await _ask(model, _request("a"))
        created = loop.time()

        await asyncio.wait_for(fake.caches.deleted.wait(), timeout=600)

        # Idle after 120 s, noticed by the next 30 s sweep.
        assert 120 <= loop.time() - created <= 150
        assert len(fake.cache_requests("DELETE")) == 1


async def test_the_metrics_collector_reads_the_clients_registry(
    fake: FakeGemini, make_model: Maker
) -> None:
    model = make_model()
    fake.caches.min_tokens = 1024
    await _ask(model, _request("a", system=SYSTEM))  # refused: too small
    fake.caches.min_tokens = 0
    await _ask(model, _request("b", system=SYSTEM + " more"))
    registry = CollectorRegistry()
    watch_gemini_caches(registry, {"gemini": model}, lambda: None)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"upstream": "gemini/*", **labels})

    assert sample("llm_worker_gemini_cached_contents") == 1
    ops = "llm_worker_gemini_cache_operations_total"
    assert sample(ops, operation="create", outcome="ok") == 1
    assert sample(ops, operation="create", outcome="too_small") == 1
