"""Each provider end to end: the worker process, the real Kafka, and the provider's fake server."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import pytest

from ferryman.client import FerrymanClient
from ferryman.contracts import ChatChunk, ChatCompleted
from tests.fakes.openai_server import FakeOpenAI, Scenario

pytestmark = pytest.mark.integration

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
]


async def _run(client: FerrymanClient, model: str, **extra: object) -> list[object]:
    request = {"model": model, "messages": [{"role": "user", "content": "hello there"}], **extra}
    return [event async for event in client.chat_stream(request, timeout=30)]


def _check_text(events: list[object], provider: str) -> ChatCompleted:
    chunks = [e for e in events if isinstance(e, ChatChunk)]
    completed = events[-1]
    assert isinstance(completed, ChatCompleted)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert "".join(c.delta.content or "" for c in chunks) == completed.content
    assert completed.provider == provider
    assert completed.usage.output_tokens > 0
    return completed


async def test_azure_openai_through_kafka(
    worker_factory, client: FerrymanClient, fake_openai: FakeOpenAI
) -> None:
    fake_openai.scenarios["prod-tools"] = Scenario(
        tool_calls=[{"name": "get_weather", "arguments": '{"city": "Oslo"}'}]
    )
    worker = worker_factory(
        AZURE_OPENAI_ENDPOINT=f"http://127.0.0.1:{fake_openai.port}",
        AZURE_OPENAI_API_KEY="az-secret",
        LLM_WORKER_AZURE__DEPLOYMENTS='{"tools": {"deployment": "prod-tools"}}',
    )
    worker.start()
    await worker.wait_ready()

    text = _check_text(await _run(client, "azure/prod-chat"), "azure")
    tool_events = await _run(client, "azure/tools", tools=TOOLS)

    assert text.content == "Echo: hello there"
    completed = tool_events[-1]
    assert isinstance(completed, ChatCompleted)
    assert [(c.name, json.loads(c.arguments)) for c in completed.tool_calls] == [
        ("get_weather", {"city": "Oslo"})
    ]
    paths = [r.path for r in fake_openai.chat_requests()]
    assert paths == [
        "/openai/deployments/prod-chat/chat/completions",
        "/openai/deployments/prod-tools/chat/completions",
    ]
    assert "az-secret" not in worker.log_path.read_text()
    listing = await asyncio.to_thread(_get_json, f"http://127.0.0.1:{worker.port}/models")
    assert listing["providers"]["azure"] == {"models": ["gpt-fake"]}
    assert listing["providers"]["mock"] == {"models": ["echo"]}


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


async def test_anthropic_through_kafka(worker_factory, client: FerrymanClient) -> None:
    from tests.fakes.anthropic_server import FakeAnthropic
    from tests.fakes.anthropic_server import Scenario as AnthropicScenario

    fake = FakeAnthropic()
    await fake.start()
    try:
        fake.scenarios["claude-tools"] = AnthropicScenario(
            tool_calls=[
                {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                {"name": "get_weather", "arguments": '{"city": "Rome"}'},
            ]
        )
        worker = worker_factory(
            ANTHROPIC_API_KEY="sk-ant-secret", LLM_WORKER_ANTHROPIC__BASE_URL=fake.base_url
        )
        worker.start()
        await worker.wait_ready()

        text = _check_text(await _run(client, "anthropic/claude-text"), "anthropic")
        tool_events = await _run(client, "anthropic/claude-tools", tools=TOOLS)
    finally:
        await fake.stop()

    assert text.content == "Echo: hello there"
    completed = tool_events[-1]
    assert isinstance(completed, ChatCompleted)
    assert completed.finish_reason == "tool_calls"
    assert [(c.name, json.loads(c.arguments)) for c in completed.tool_calls] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_weather", {"city": "Rome"}),
    ]
    [first, second] = fake.message_requests()
    assert first.body["messages"] == [{"role": "user", "content": "hello there"}]
    assert second.body["tools"][0]["name"] == "get_weather"
    assert "sk-ant-secret" not in worker.log_path.read_text()


async def test_gemini_through_kafka_keeps_thought_signatures_across_turns(
    worker_factory, client: FerrymanClient
) -> None:
    from tests.fakes.gemini_server import FakeGemini
    from tests.fakes.gemini_server import Scenario as GeminiScenario

    fake = FakeGemini()
    await fake.start()
    try:
        fake.scenarios["gemini-tools"] = GeminiScenario(
            function_calls=[
                {"name": "get_weather", "args": {"city": "Oslo"}, "id": "fc-1",
                 "thought_signature": "c2lnLW9zbG8="},
                {"name": "get_weather", "args": {"city": "Rome"}},
            ]
        )  # fmt: skip
        worker = worker_factory(
            GEMINI_API_KEY="g-secret", LLM_WORKER_GEMINI__BASE_URL=fake.base_url
        )
        worker.start()
        await worker.wait_ready()

        text = _check_text(await _run(client, "gemini/gemini-text"), "gemini")
        tool_events = await _run(client, "gemini/gemini-tools", tools=TOOLS)
        completed = tool_events[-1]
        assert isinstance(completed, ChatCompleted)
        follow_up = {
            "model": "gemini/gemini-text",
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "tool_calls": [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.name, "arguments": c.arguments}}
                    for c in completed.tool_calls
                ]},
                *({"role": "tool", "tool_call_id": c.id, "content": "sunny"}
                  for c in completed.tool_calls),
            ],
        }  # fmt: skip
        answer = await client.chat(follow_up, timeout=30)
    finally:
        await fake.stop()

    assert text.content == "Echo: hello there"
    assert completed.finish_reason == "tool_calls"
    assert [json.loads(c.arguments) for c in completed.tool_calls] == [
        {"city": "Oslo"},
        {"city": "Rome"},
    ]
    assert answer.provider == "gemini"
    model_turn = fake.generate_requests()[-1].body["contents"][1]
    signatures = [
        p.get("thought_signature") or p.get("thoughtSignature") for p in model_turn["parts"]
    ]
    assert signatures[0] is not None
    assert signatures[0].rstrip("=").replace("-", "+").replace("_", "/") == "c2lnLW9zbG8"
    assert "g-secret" not in worker.log_path.read_text()
