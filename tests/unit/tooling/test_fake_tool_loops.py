"""The provider fakes play a multi-step tool loop, driven through the worker's own adapters.

Each fake scripts two tool steps (two parallel calls, then one call) and a final answer that
echoes the last round's results, and checks the conversation like its real API: a missing
tool result (and, for Gemini 3, a missing or wrong thought signature) is an HTTP 400. The
conversation is fed back as the worker's tool loop does (an `AssistantMessage` with the
completion's tool calls, then one `ToolMessage` per call), so these tests also prove each
adapter maps multi-step tool rounds, Gemini's thought signatures included, streamed and not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from llm_worker.chat.streaming import Completion, fold
from llm_worker.providers.anthropic import AnthropicChatModel
from llm_worker.providers.anthropic import create_client as anthropic_client
from llm_worker.providers.azure import AzureChatModel
from llm_worker.providers.config import AzureOpenAIConfig
from llm_worker.providers.gemini import GeminiChatModel
from llm_worker.providers.gemini import create_client as gemini_client
from llm_worker.providers.gemini_request import join_tool_call_id, split_tool_call_id
from llm_worker.providers.openai import OpenAIChatModel
from llm_worker.providers.openai import create_client as openai_client
from llm_worker.providers.port import ChatModel
from llm_worker.providers.tool_ids import neutral_tool_call_id
from tests.fakes import anthropic_server, gemini_server, openai_server
from tests.fakes.http_fake import FakeHttpServer
from tests.fakes.tool_loop import (
    anthropic_conversation,
    gemini_conversation,
    gemini_signature,
    openai_conversation,
)
from tests.virtual_time import on_virtual_time

PROVIDERS = ["openai", "azure", "anthropic", "gemini"]
TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("get_weather", "get_time")
]
STEPS = [
    [
        {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"name": "get_time", "arguments": '{"zone": "CET"}'},
    ],
    [{"name": "get_weather", "arguments": '{"city": "Rome"}'}],
]
RESULTS = {"Oslo": "sunny in Oslo", "CET": "12:00 CET", "Rome": "rainy in Rome"}
"""Each call's tool result, by its one argument's value."""
ID_PREFIX = {"openai": "call", "azure": "call", "anthropic": "toolu"}


@dataclass
class Loop:
    """A provider adapter over its fake."""

    name: str
    model: ChatModel
    model_name: str
    fake: FakeHttpServer

    def script(self, **fields: Any) -> None:
        """Register the scenario (the tool-loop fields are named alike in every fake)."""
        self.fake.scenarios[self.model_name] = self.fake.scenario_type(**fields)

    def bodies(self) -> list[dict[str, Any]]:
        """The bodies of the recorded model calls."""
        fake: Any = self.fake
        for calls in ("chat_requests", "message_requests", "generate_requests"):
            if hasattr(fake, calls):
                return [r.body for r in getattr(fake, calls)()]
        raise AssertionError(f"{type(fake).__name__} records no model calls")


@asynccontextmanager
async def open_loop(name: str, timeout: float = 5) -> AsyncIterator[Loop]:
    fake: Any
    if name in ("openai", "azure"):
        fake = openai_server.FakeOpenAI()
        await fake.start()
        if name == "openai":
            client = openai_client(
                api_key="k", base_url=fake.base_url, timeout=timeout, connect_timeout=timeout
            )
            model: ChatModel = OpenAIChatModel(client)
            model_name = "gpt-loop"
        else:
            config = AzureOpenAIConfig.model_validate(
                {"endpoint": f"http://127.0.0.1:{fake.port}", "api_key": "k", "timeout": timeout}
            )
            model, model_name = AzureChatModel(config), "loop"
    elif name == "anthropic":
        fake = anthropic_server.FakeAnthropic()
        await fake.start()
        client = anthropic_client(
            api_key="k", base_url=fake.base_url, timeout=timeout, connect_timeout=timeout
        )
        model, model_name = AnthropicChatModel(client), "claude-loop"
    else:
        fake = gemini_server.FakeGemini()
        await fake.start()
        client = gemini_client(api_key="k", base_url=fake.base_url, timeout=timeout)
        model, model_name = GeminiChatModel(client), "gemini-loop"
    try:
        yield Loop(name, model, model_name, fake)
    finally:
        await model.aclose()
        await fake.stop()


@pytest.fixture(params=PROVIDERS)
async def provider(request: pytest.FixtureRequest) -> AsyncIterator[Loop]:
    async with open_loop(request.param) as opened:
        yield opened


def _request(messages: list[dict[str, Any]]) -> ChatRequest:
    return ChatRequest.model_validate({"model": "x/y", "messages": messages, "tools": TOOLS})


async def _answer(loop: Loop, messages: list[dict[str, Any]], streamed: bool) -> Completion:
    request = _request(messages)
    if streamed:
        return await fold(loop.model.stream(request, loop.model_name))
    return await loop.model.generate(request, loop.model_name)


def _result(call: Any) -> str:
    (value,) = json.loads(call.arguments).values()
    return RESULTS[value]


def _feed_back(
    completion: Completion, result: Callable[[Any], str] = _result, *, reverse: bool = False
) -> list[dict[str, Any]]:
    """The messages the worker's loop appends after a turn of tool calls."""
    assistant = {
        "role": "assistant",
        "content": completion.content or None,
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in completion.tool_calls
        ],
    }
    tools = [
        {"role": "tool", "tool_call_id": c.id, "content": result(c)} for c in completion.tool_calls
    ]
    return [assistant, *(reversed(tools) if reverse else tools)]


async def _run(loop: Loop, streamed: bool) -> tuple[list[Completion], list[dict[str, Any]]]:
    """Play the loop to its final answer (at most four turns)."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "weather and time?"}]
    completions: list[Completion] = []
    for _ in range(4):
        completion = await _answer(loop, messages, streamed)
        completions.append(completion)
        if completion.finish_reason != "tool_calls":
            break
        messages.extend(_feed_back(completion))
    return completions, messages


def _assert_ids(loop: Loop, completion: Completion, step: int) -> None:
    ids = [c.id for c in completion.tool_calls]
    if loop.name != "gemini":
        prefix = ID_PREFIX[loop.name]
        assert ids == [f"{prefix}_{step}_{i}" for i in range(len(ids))]
        return
    # Gemini sends no ids (the adapter makes them) and signs only the first call of a step.
    signatures = [split_tool_call_id(i)[1] for i in ids]
    assert signatures == [f"sig-{step}-0".encode()] + [None] * (len(ids) - 1)


@pytest.mark.parametrize("streamed", [True, False], ids=["stream", "generate"])
async def test_a_two_step_loop_calls_tools_in_parallel_then_echoes_the_last_results(
    provider: Loop, streamed: bool
) -> None:
    loop = provider
    loop.script(tool_steps=STEPS, echo_tool_results=True)

    completions, _ = await _run(loop, streamed)

    assert [c.finish_reason for c in completions] == ["tool_calls", "tool_calls", "stop"]
    for step, completion in enumerate(completions[:2]):
        calls = [{"name": c.name, "arguments": c.arguments} for c in completion.tool_calls]
        assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
            (s["name"], json.loads(s["arguments"])) for s in STEPS[step]
        ]
        _assert_ids(loop, completion, step)
    all_ids = [c.id for completion in completions for c in completion.tool_calls]
    assert len(set(all_ids)) == len(all_ids) == 3
    assert completions[2].content == "tool results: rainy in Rome"
    assert completions[2].tool_calls == []
    inputs = [c.usage.input_tokens for c in completions]
    assert 0 < inputs[0] < inputs[1] < inputs[2], "each turn's input grows with the conversation"
    assert all(c.usage.output_tokens > 0 for c in completions)
    assert len(loop.bodies()) == 3


async def test_the_echo_gives_the_results_of_parallel_calls_in_call_order(provider: Loop) -> None:
    loop = provider
    loop.script(tool_steps=STEPS[:1], echo_tool_results=True)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "weather and time?"}]
    first = await _answer(loop, messages, streamed=True)

    messages.extend(_feed_back(first, reverse=True))
    final = await _answer(loop, messages, streamed=True)

    assert final.content == "tool results: sunny in Oslo | 12:00 CET"


@pytest.mark.parametrize("streamed", [True, False], ids=["stream", "generate"])
async def test_a_missing_tool_result_is_refused_as_an_invalid_request(
    provider: Loop, streamed: bool
) -> None:
    loop = provider
    loop.script(tool_steps=STEPS, echo_tool_results=True)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "weather and time?"}]
    first = await _answer(loop, messages, streamed)
    messages.extend(_feed_back(first)[:-1])  # the second call gets no result

    with pytest.raises(FerrymanError) as failure:
        await _answer(loop, messages, streamed)

    error = failure.value
    assert (error.code, error.retryable, error.status) == (ErrorCode.INVALID_REQUEST, False, 400)


@pytest.mark.parametrize("streamed", [True, False], ids=["stream", "generate"])
async def test_gemini_refuses_a_step_without_its_thought_signature(streamed: bool) -> None:
    async with open_loop("gemini") as loop:
        loop.script(tool_steps=STEPS, echo_tool_results=True)
        messages: list[dict[str, Any]] = [{"role": "user", "content": "weather and time?"}]
        first = await _answer(loop, messages, streamed)
        fed = _feed_back(first)
        for call in fed[0]["tool_calls"]:
            call["id"] = neutral_tool_call_id(call["id"])
        for result in fed[1:]:
            result["tool_call_id"] = neutral_tool_call_id(result["tool_call_id"])

        with pytest.raises(FerrymanError) as failure:
            await _answer(loop, [*messages, *fed], streamed)

        error = failure.value
        assert (error.code, error.retryable, error.status) == (
            ErrorCode.INVALID_REQUEST,
            False,
            400,
        )
        assert "missing a thought_signature" in error.message
        assert "get_weather" in error.message


async def test_gemini_refuses_a_thought_signature_it_did_not_give() -> None:
    async with open_loop("gemini") as loop:
        loop.script(tool_steps=STEPS)
        messages: list[dict[str, Any]] = [{"role": "user", "content": "weather and time?"}]
        first = await _answer(loop, messages, streamed=True)
        fed = _feed_back(first)
        forged = join_tool_call_id(split_tool_call_id(first.tool_calls[0].id)[0], b"sig-9-0")
        fed[0]["tool_calls"][0]["id"] = forged
        fed[1]["tool_call_id"] = forged

        with pytest.raises(FerrymanError) as failure:
            await _answer(loop, [*messages, *fed], streamed=True)

        assert failure.value.code is ErrorCode.INVALID_REQUEST
        assert "thought signature" in failure.value.message


async def test_gemini_signatures_travel_back_on_the_first_call_of_every_step() -> None:
    async with open_loop("gemini") as loop:
        loop.script(tool_steps=STEPS, echo_tool_results=True)

        await _run(loop, streamed=True)

        contents = loop.bodies()[-1]["contents"]
        model_turns = [c["parts"] for c in contents if c["role"] == "model"]
        assert [[p.get("thoughtSignature") for p in parts] for parts in model_turns] == [
            [gemini_signature(0), None],
            [gemini_signature(1)],
        ]


@pytest.mark.parametrize("name", PROVIDERS)
@on_virtual_time
async def test_delays_from_step_makes_only_the_later_steps_slow(name: str) -> None:
    async with open_loop(name, timeout=60) as loop:
        loop.script(tool_steps=STEPS, first_token_delay=20, delays_from_step=1)
        clock = asyncio.get_running_loop()
        messages: list[dict[str, Any]] = [{"role": "user", "content": "weather and time?"}]
        took: list[float] = []
        for _ in range(3):
            started = clock.time()
            completion = await _answer(loop, messages, streamed=True)
            took.append(clock.time() - started)
            if completion.tool_calls:
                messages.extend(_feed_back(completion))

        assert took[0] < 20 <= took[1]
        assert took[2] >= 20


# --- the conversation readers, on hand-written wire bodies ---------------------------------------


def test_openai_reader_counts_rounds_and_refuses_unanswered_or_stray_tool_messages() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    answered = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "done"}]},
    ]
    unanswered = [*answered[:2], {"role": "user", "content": "and?"}]
    stray = [answered[0], answered[2]]

    read = openai_conversation(answered)

    assert (read.rounds, read.last_results, read.error) == (1, ["done"], None)
    assert "did not have response messages: c1" in str(openai_conversation(unanswered).error)
    assert "must be a response to a preceeding message" in str(openai_conversation(stray).error)


def test_anthropic_reader_reads_text_blocks_and_marks_errors() -> None:
    uses = [{"type": "tool_use", "id": f"t{i}", "name": "f", "input": {}} for i in (1, 2)]
    ok = {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "ok"}]}
    boom = {"type": "tool_result", "tool_use_id": "t1", "content": "boom", "is_error": True}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": uses},
        {"role": "user", "content": [ok, boom]},
    ]

    read = anthropic_conversation(messages)

    assert (read.rounds, read.last_results, read.error) == (1, ["error: boom", "ok"], None)
    missing = anthropic_conversation([*messages[:2], {"role": "user", "content": "next"}])
    assert "`tool_use` ids were found without `tool_result` blocks" in str(missing.error)


def test_gemini_reader_serializes_structured_responses_as_compact_json() -> None:
    contents = [
        {"role": "user", "parts": [{"text": "hi"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}] * 2},
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "f", "response": {"temp": 21, "sky": "clear"}}},
                {"functionResponse": {"name": "f", "response": {"result": "plain"}}},
            ],
        },
    ]

    read = gemini_conversation(contents, signatures=False)

    assert read.last_results == ['{"temp":21,"sky":"clear"}', "plain"]
    assert read.error is None
    unsigned = gemini_conversation(contents, signatures=True).error
    assert "missing a thought_signature" in str(unsigned)
