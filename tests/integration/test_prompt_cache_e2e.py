"""Prompt caching across failover, end to end: worker process, real Kafka, provider fakes.

Each deployment gets the request shaped for itself: Anthropic sees `cache_control` on the
blocks that end the marked prefixes; OpenAI sees no marker at all (its fake refuses unknown
message keys with a 400) but a tenant-namespaced `prompt_cache_key`. The fakes play each
provider's cache, so `completed.usage` shows the reads and writes of the deployment that
answered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ferryman.client import FerrymanClient
from ferryman.contracts import ChatCompleted
from llm_worker.caching.prompt_prep import namespaced_key
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.anthropic_server import Scenario as AnthropicScenario
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.openai_server import Scenario as OpenAIScenario

pytestmark = pytest.mark.integration

HOUR = {"type": "ephemeral", "ttl": "1h"}
RULES = "You answer from the staff handbook only, citing the section. " * 8
TOOLS = [
    {
        "type": "function",
        "function": {"name": "search_handbook", "parameters": {"type": "object"}},
    }
]


@pytest.fixture
async def fake_anthropic() -> Any:
    fake = FakeAnthropic()
    await fake.start()
    yield fake
    await fake.stop()


def _worker(
    worker_factory: Any, tmp_path: Path, routing: str, anthropic: FakeAnthropic, openai: FakeOpenAI
) -> Any:
    path = tmp_path / "routing.yaml"
    path.write_text(routing)
    return worker_factory(
        ANTHROPIC_API_KEY="sk-ant-test",
        LLM_WORKER_ANTHROPIC__BASE_URL=anthropic.base_url,
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=openai.base_url,
        LLM_WORKER_ROUTING_FILE=str(path),
        LLM_WORKER_RETRY_MAX_ATTEMPTS="1",
    )


def _keys(value: object) -> set[str]:
    """Every dict key anywhere in `value`."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


async def test_anthropic_overloaded_falls_back_to_openai_without_markers_and_with_the_key(
    worker_factory: Any,
    client: FerrymanClient,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
) -> None:
    fake_anthropic.scenarios["claude-sonnet-4-5"] = AnthropicScenario(status=529)
    fake_openai.scenarios["gpt-4o"] = OpenAIScenario(answer="Section 4.")
    worker = _worker(
        worker_factory,
        tmp_path,
        "deployments:\n"
        "  claude: {provider: anthropic, model: claude-sonnet-4-5}\n"
        "  gpt: {provider: openai, model: gpt-4o}\n"
        "routes:\n"
        "  handbook: {deployments: [claude], fallbacks: [backup]}\n"
        "  backup: {deployments: [gpt]}\n",
        fake_anthropic,
        fake_openai,
    )
    worker.start()
    await worker.wait_ready()

    def request(question: str) -> dict[str, Any]:
        return {
            "model": "handbook",
            "messages": [
                {"role": "system", "content": RULES, "cache_control": {"ttl": "1h"}},
                {"role": "user", "content": question},
            ],
            "tools": TOOLS,
            "prompt_cache": {"key": "handbook-v3", "tools": {"ttl": "1h"}},
        }

    first = await client.chat(request("How many leave days?"), timeout=60, tenant="acme")
    second = await client.chat(request("Who approves leave?"), timeout=60, tenant="acme")

    # Anthropic was offered the breakpoints in its wire form (and refused with 529).
    [tried, *_] = fake_anthropic.message_requests()
    assert tried.body["tools"][-1]["cache_control"] == HOUR
    assert tried.body["system"] == [{"type": "text", "text": RULES, "cache_control": HOUR}]
    assert "prompt_cache_key" not in tried.body
    # OpenAI answered: no marker anywhere, the key namespaced by tenant.
    bodies = [r.body for r in fake_openai.chat_requests()]
    assert len(bodies) == 2
    for body in bodies:
        assert "cache_control" not in _keys(body)
        assert body["prompt_cache_key"] == namespaced_key("acme", "handbook-v3")
        assert "acme" not in body["prompt_cache_key"]
    for completed in (first, second):
        assert isinstance(completed, ChatCompleted)
        assert (completed.provider, completed.content) == ("openai", "Section 4.")
        assert [a.outcome for a in completed.attempts or []][-1] == "completed"
        assert completed.usage.cache_write_tokens is None  # OpenAI reports no writes
    assert first.usage.cached_input_tokens == 0
    assert second.usage.cached_input_tokens == len(RULES.split())  # the shared prefix
    assert "sk-ant-test" not in worker.log_path.read_text()


async def test_openai_down_falls_back_to_anthropic_with_auto_breakpoints_that_write_then_read(
    worker_factory: Any,
    client: FerrymanClient,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
) -> None:
    fake_openai.scenarios["gpt-down"] = OpenAIScenario(status=500)
    fake_anthropic.scenarios["claude-sonnet-4-5"] = AnthropicScenario(answer="Noted.")
    worker = _worker(
        worker_factory,
        tmp_path,
        "deployments:\n"
        "  gpt: {provider: openai, model: gpt-down}\n"
        "  claude: {provider: anthropic, model: claude-sonnet-4-5,"
        " prompt_cache: {min_tokens: 50}}\n"
        "routes:\n"
        "  agent: {deployments: [gpt], fallbacks: [careful], prompt_cache: {auto: true}}\n"
        "  careful: {deployments: [claude], prompt_cache: {auto: true, retention: long}}\n",
        fake_anthropic,
        fake_openai,
    )
    worker.start()
    await worker.wait_ready()
    turns: list[dict[str, Any]] = [
        {"role": "system", "content": RULES},
        {"role": "user", "content": "I start on Monday."},
        {"role": "assistant", "content": "Welcome aboard."},
        {"role": "user", "content": "My manager is Kim."},
    ]

    first = await client.chat({"model": "agent", "messages": turns}, timeout=60, tenant="acme")
    turns += [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": "What should I read first?"},
    ]
    second = await client.chat({"model": "agent", "messages": turns}, timeout=60, tenant="acme")

    # OpenAI (failing) got the auto key of the stable prefix, no marker.
    refused = [r.body for r in fake_openai.chat_requests()]
    assert refused
    for body in refused:
        assert "cache_control" not in _keys(body)
        assert body["prompt_cache_key"].startswith("fm-")
    # Anthropic got auto mode's breakpoints under its route's long retention:
    # the system (stable prefix) and the last turn.
    sent = [r.body for r in fake_anthropic.message_requests()]
    assert len(sent) == 2
    for body in sent:
        assert body["system"] == [{"type": "text", "text": RULES, "cache_control": HOUR}]
        last = body["messages"][-1]["content"]
        assert last == [{"type": "text", "text": turns[-1 if body is sent[1] else 3]["content"],
                         "cache_control": HOUR}]  # fmt: skip
        assert "cache_control" not in json.dumps(body["messages"][:-1])
    # The first call wrote its whole prompt for an hour; the second read it back.
    assert first.provider == second.provider == "anthropic"
    written = first.usage.cache_write_tokens
    assert written is not None
    assert written > 0
    assert first.usage.cache_write_long_tokens == written
    assert first.usage.cached_input_tokens == 0
    assert second.usage.cached_input_tokens == written
    assert second.usage.input_tokens >= written + (second.usage.cache_write_tokens or 0)


async def test_anthropic_overloaded_falls_back_to_gemini_which_caches_the_marked_prefix(
    worker_factory: Any,
    client: FerrymanClient,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
) -> None:
    from tests.fakes.gemini_server import FakeGemini
    from tests.fakes.gemini_server import Scenario as GeminiScenario

    gemini = FakeGemini()
    await gemini.start()
    try:
        fake_anthropic.scenarios["claude-sonnet-4-5"] = AnthropicScenario(status=529)
        gemini.scenarios["gemini-2.5-flash"] = GeminiScenario(answer="Section 9.")
        worker = _worker(
            worker_factory,
            tmp_path,
            "deployments:\n"
            "  claude: {provider: anthropic, model: claude-sonnet-4-5}\n"
            "  flash: {provider: gemini, model: gemini-2.5-flash}\n"
            "routes:\n"
            "  handbook: {deployments: [claude], fallbacks: [backup]}\n"
            "  backup: {deployments: [flash]}\n",
            fake_anthropic,
            fake_openai,
        )
        worker.env.update(
            GEMINI_API_KEY="g-test",
            LLM_WORKER_GEMINI__BASE_URL=gemini.base_url,
            LLM_WORKER_GEMINI__CACHE_MIN_TOKENS='{"*": 10}',
        )
        worker.start()
        await worker.wait_ready()

        def request(question: str) -> dict[str, Any]:
            return {
                "model": "handbook",
                "messages": [
                    {"role": "system", "content": RULES, "cache_control": {}},
                    {"role": "user", "content": question},
                ],
                "tools": TOOLS,
                "prompt_cache": {"tools": {}},
            }

        first = await client.chat(request("How many leave days?"), timeout=60, tenant="acme")
        second = await client.chat(request("Who approves leave?"), timeout=60, tenant="acme")
        creates = gemini.cache_requests("POST")
        generates = gemini.generate_requests()
    finally:
        await gemini.stop()

    [tried, *_] = fake_anthropic.message_requests()
    assert tried.body["system"] == [
        {"type": "text", "text": RULES, "cache_control": {"type": "ephemeral"}}
    ]
    assert tried.body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    # Gemini put the marked prefix (system + tools) in one cached content, used twice.
    assert len(creates) == 1
    assert RULES.strip() in json.dumps(creates[0].body)
    assert len(generates) == 2
    for generate in generates:
        assert "/v1beta/" in generate.path
        body = generate.body
        assert body.get("cachedContent") or body.get("cached_content")
        assert not {"systemInstruction", "system_instruction", "tools"} & set(body)
    assert (first.provider, second.provider) == ("gemini", "gemini")
    assert first.usage.cache_write_tokens
    assert second.usage.cached_input_tokens
    assert not second.usage.cache_write_tokens
