"""The OpenAI adapter, driving the real `openai` SDK against the in-process fake server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from llm_worker.chat.streaming import (
    Finish,
    StreamEvent,
    TextDelta,
    ToolCallFragment,
    UsageReport,
    fold,
)
from llm_worker.providers.openai import OpenAIChatModel, create_client
from tests.fakes.openai_server import FakeOpenAI, Scenario

API_KEY = "sk-test-SECRET-key-0042"
TOOL_CALLS = [
    {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
    {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
]

MessageList = list[dict[str, Any]]
MESSAGES: MessageList = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Weather here?"},
            {
                "type": "image_url",
                "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"},
            },
        ],
    },
    {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": "{}"},
            }
        ],
    },
    {"role": "tool", "content": "sunny", "tool_call_id": "call_a"},
]
TOOLS: MessageList = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def _request(**fields: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "openai/x", "messages": MESSAGES, **fields})


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def make_model(fake: FakeOpenAI) -> AsyncIterator[Callable[..., OpenAIChatModel]]:
    models: list[OpenAIChatModel] = []

    def make(timeout: float = 10.0) -> OpenAIChatModel:
        client = create_client(
            api_key=API_KEY, base_url=fake.base_url, timeout=timeout, connect_timeout=5.0
        )
        models.append(OpenAIChatModel(client))
        return models[-1]

    yield make
    for model in models:
        await model.aclose()


async def _collect(model: OpenAIChatModel, request: ChatRequest, name: str) -> list[StreamEvent]:
    return [event async for event in model.stream(request, name)]


async def test_a_text_stream_yields_deltas_then_usage_then_finish(
    fake: FakeOpenAI, make_model: Callable[..., OpenAIChatModel]
) -> None:
    fake.scenarios["m-text"] = Scenario(answer="The weather is sunny today")
    request = _request(
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
        },
        temperature=0.2,
        max_tokens=50,
        stop=["END"],
    )

    events = await _collect(make_model(), request, "m-text")

    *texts, usage, finish = events
    assert all(isinstance(t, TextDelta) for t in texts)
    assert "".join(t.text for t in texts) == "The weather is sunny today"  # type: ignore[union-attr]
    assert isinstance(usage, UsageReport)
    assert usage.output_tokens == 5
    assert usage.input_tokens > 0
    assert finish == Finish(reason="stop", model="m-text")
    [recorded] = fake.chat_requests()
    assert recorded.headers["Authorization"] == f"Bearer {API_KEY}"
    assert recorded.body == {
        "model": "m-text",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
        },
        "temperature": 0.2,
        "max_tokens": 50,
        "stop": ["END"],
    }


async def test_parallel_tool_calls_stream_as_fragments_with_id_and_name_once_per_call(
    fake: FakeOpenAI, make_model: Callable[..., OpenAIChatModel]
) -> None:
    fake.scenarios["m-tools"] = Scenario(tool_calls=TOOL_CALLS)
    model = make_model()

    events = await _collect(model, _request(tools=TOOLS), "m-tools")

    fragments = [e for e in events if isinstance(e, ToolCallFragment)]
    assert not [e for e in events if isinstance(e, TextDelta)]
    assert [f.index for f in fragments] == sorted(f.index for f in fragments)
    for index, call in enumerate(TOOL_CALLS):
        own = [f for f in fragments if f.index == index]
        assert len(own) > 2, "the fake streams arguments in several fragments"
        assert (own[0].id, own[0].name) == (f"call_{index}", call["name"])
        assert all(f.id is None and f.name is None for f in own[1:])
        arguments = "".join(f.arguments or "" for f in own)
        assert arguments == call["arguments"]
        json.loads(arguments)
    assert events[-1] == Finish(reason="tool_calls", model="m-tools")

    completion = await fold(model.stream(_request(tools=TOOLS), "m-tools"))

    assert completion.finish_reason == "tool_calls"
    assert completion.content == ""
    assert [(c.id, c.name, c.arguments) for c in completion.tool_calls] == [
        (f"call_{i}", c["name"], c["arguments"]) for i, c in enumerate(TOOL_CALLS)
    ]


@pytest.mark.parametrize(
    "scenario", [Scenario(answer="one two three"), Scenario(tool_calls=TOOL_CALLS)]
)
async def test_generate_returns_the_same_completion_as_folding_the_stream(
    fake: FakeOpenAI, make_model: Callable[..., OpenAIChatModel], scenario: Scenario
) -> None:
    fake.scenarios["m-same"] = scenario
    model = make_model()

    generated = await model.generate(_request(), "m-same")
    streamed = await fold(model.stream(_request(), "m-same"))

    assert generated == streamed
    assert generated.model == "m-same"
    assert [r.body["stream"] for r in fake.chat_requests()] == [False, True]
    assert "stream_options" not in fake.chat_requests()[0].body


_ERRORS: list[tuple[Scenario, ErrorCode, bool, float | None]] = [
    (Scenario(status=429, headers={"retry-after": "2"}), ErrorCode.RATE_LIMITED, True, 2.0),
    (Scenario(status=429, headers={"retry-after-ms": "1500"}), ErrorCode.RATE_LIMITED, True, 1.5),
    (Scenario(status=401), ErrorCode.AUTH, False, None),
    (Scenario(status=403), ErrorCode.PERMISSION_DENIED, False, None),
    (Scenario(status=408), ErrorCode.TIMEOUT, True, None),
    (
        Scenario(status=400, error_code="context_length_exceeded"),
        ErrorCode.CONTEXT_LENGTH,
        False,
        None,
    ),
    (Scenario(status=400, error_code="content_filter"), ErrorCode.CONTENT_FILTER, False, None),
    (
        Scenario(status=400, error_code="content_policy_violation"),
        ErrorCode.CONTENT_FILTER,
        False,
        None,
    ),
    (Scenario(status=400), ErrorCode.INVALID_REQUEST, False, None),
    (Scenario(status=404), ErrorCode.NOT_FOUND, False, None),
    (Scenario(status=409), ErrorCode.UNAVAILABLE, True, None),
    (Scenario(status=500), ErrorCode.UNAVAILABLE, True, None),
    (Scenario(status=503), ErrorCode.UNAVAILABLE, True, None),
]


@pytest.mark.parametrize(
    ("scenario", "code", "retryable", "retry_after"),
    _ERRORS,
    ids=[f"{s.status}-{s.error_code or ''}-{','.join(s.headers)}" for s, *_ in _ERRORS],
)
async def test_http_errors_map_to_the_shared_taxonomy(
    fake: FakeOpenAI,
    make_model: Callable[..., OpenAIChatModel],
    scenario: Scenario,
    code: ErrorCode,
    retryable: bool,
    retry_after: float | None,
) -> None:
    fake.scenarios["m-err"] = scenario
    model = make_model()

    with pytest.raises(FerrymanError) as streamed:
        await _collect(model, _request(), "m-err")
    with pytest.raises(FerrymanError) as generated:
        await model.generate(_request(), "m-err")

    for error in (streamed.value, generated.value):
        assert error.code is code
        assert error.retryable is retryable
        assert error.status == scenario.status
        assert error.retry_after == retry_after
        assert error.upstream == "openai"
        assert API_KEY not in error.message
        assert API_KEY not in repr(error)
    if code is ErrorCode.AUTH:
        assert streamed.value.message == f"OpenAI rejected the credentials ({scenario.status})"


async def _events_until_failure(
    model: OpenAIChatModel, name: str
) -> tuple[list[StreamEvent], FerrymanError]:
    events: list[StreamEvent] = []

    async def drain() -> None:
        async for event in model.stream(_request(), name):
            events.append(event)

    with pytest.raises(FerrymanError) as failure:
        await drain()
    return events, failure.value


@pytest.mark.parametrize(
    ("scenario", "code", "delivered"),
    [
        (Scenario(answer="a b c d e", cut_after=2), ErrorCode.UNAVAILABLE, 2),
        (Scenario(answer="a b c d e", error_event_after=2), ErrorCode.UNAVAILABLE, 2),
        (Scenario(answer="a b c d e", stall_after=1), ErrorCode.TIMEOUT, 1),
    ],
    ids=["cut", "error-event", "stall"],
)
async def test_a_stream_failing_midway_raises_a_retryable_error_and_never_finishes(
    fake: FakeOpenAI,
    make_model: Callable[..., OpenAIChatModel],
    scenario: Scenario,
    code: ErrorCode,
    delivered: int,
) -> None:
    fake.scenarios["m-fault"] = scenario

    events, error = await _events_until_failure(make_model(timeout=0.5), "m-fault")

    assert error.code is code
    assert error.retryable is True
    assert error.upstream == "openai"
    assert events == [TextDelta(text=t) for t in ["a", " b", " c"][:delivered]]


async def test_a_malformed_stream_event_raises_a_retryable_ferryman_error(
    fake: FakeOpenAI, make_model: Callable[..., OpenAIChatModel]
) -> None:
    fake.scenarios["m-bad"] = Scenario(answer="a b c", malformed_after=1)

    events, error = await _events_until_failure(make_model(), "m-bad")

    assert error.retryable is True
    assert not [e for e in events if isinstance(e, Finish)]


async def test_a_stream_without_the_done_terminator_still_finishes(
    fake: FakeOpenAI, make_model: Callable[..., OpenAIChatModel]
) -> None:
    fake.scenarios["m-nodone"] = Scenario(answer="a b", send_done=False)

    events = await _collect(make_model(), _request(), "m-nodone")

    assert events[0] == TextDelta(text="a")
    assert events[-1] == Finish(reason="stop", model="m-nodone")


async def test_a_finished_stream_held_open_without_done_ends_without_waiting_for_the_timeout(
    fake: FakeOpenAI, make_model: Callable[..., OpenAIChatModel]
) -> None:
    fake.scenarios["m-held"] = Scenario(answer="a b", hold_open=True)
    model = make_model(timeout=60.0)

    # Bounded far below the 60 s read timeout: only the drain bound can end it this soon.
    async with asyncio.timeout(10):
        events = await _collect(model, _request(), "m-held")

    assert events[-1] == Finish(reason="stop", model="m-held")
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "a b"


async def test_list_models_returns_the_servers_model_ids(
    fake: FakeOpenAI, make_model: Callable[..., OpenAIChatModel]
) -> None:
    assert await make_model().list_models() == ["gpt-fake"]
    assert [r.path for r in fake.requests] == ["/v1/models"]


async def test_the_configured_organization_is_sent_with_every_call(fake: FakeOpenAI) -> None:
    from llm_worker.providers.config import OpenAIConfig
    from llm_worker.providers.factory import openai_client

    config = OpenAIConfig.model_validate(
        {"api_key": API_KEY, "base_url": fake.base_url, "organization": "org-ferry"}
    )
    model = openai_client(config, max_in_flight=4)
    try:
        await model.generate(_request(), "gpt-x")
    finally:
        await model.aclose()

    [call] = fake.chat_requests()
    assert {k.lower(): v for k, v in call.headers.items()}.get("openai-organization") == "org-ferry"
