"""The Anthropic adapter, driving the real `anthropic` SDK against the in-process fake server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
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
from llm_worker.providers.anthropic import AnthropicChatModel, create_client
from llm_worker.providers.anthropic_mapping import SamplingPolicy
from tests.fakes.anthropic_server import DEFAULT_MODELS, FakeAnthropic, Scenario

API_KEY = "sk-ant-test-SECRET-key-0042"
TOOL_CALLS = [
    {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
    {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
]
PNG_DATA = "iVBORw0KGgo="

MessageList = list[dict[str, Any]]
MESSAGES: MessageList = [
    {"role": "system", "content": "Be brief."},
    {"role": "system", "content": [{"type": "text", "text": "Answer in French."}]},
    {
        "role": "user",
        "name": "ada",
        "content": [
            {"type": "text", "text": "Weather here?"},
            {
                "type": "image_url",
                "image_url": {"url": f"data:image/png;base64,{PNG_DATA}", "detail": "low"},
            },
            {"type": "image_url", "image_url": {"url": "https://example.com/sky.jpg"}},
        ],
    },
    {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "toolu_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "toolu_b",
                "type": "function",
                "function": {"name": "get_time", "arguments": "{}"},
            },
        ],
    },
    {"role": "tool", "content": "sunny", "tool_call_id": "toolu_a"},
    {"role": "tool", "content": [{"type": "text", "text": "12:00"}], "tool_call_id": "toolu_b"},
    {"role": "user", "content": "Thanks. And tomorrow?"},
]
EXPECTED_MESSAGES: MessageList = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Weather here?"},
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": PNG_DATA},
            },
            {"type": "image", "source": {"type": "url", "url": "https://example.com/sky.jpg"}},
        ],
    },
    {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {
                "type": "tool_use",
                "id": "toolu_a",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
            {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}},
        ],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny"},
            {
                "type": "tool_result",
                "tool_use_id": "toolu_b",
                "content": [{"type": "text", "text": "12:00"}],
            },
        ],
    },
    {"role": "user", "content": "Thanks. And tomorrow?"},
]
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS: MessageList = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather.",
            "parameters": WEATHER_SCHEMA,
        },
    },
    {"type": "function", "function": {"name": "get_time", "strict": True}},
]
EXPECTED_TOOLS: MessageList = [
    {"name": "get_weather", "description": "Current weather.", "input_schema": WEATHER_SCHEMA},
    {"name": "get_time", "input_schema": {"type": "object"}, "strict": True},
]
USER_ONLY: MessageList = [{"role": "user", "content": "hello there"}]


def _request(messages: MessageList | None = None, **fields: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "anthropic/x", "messages": messages or USER_ONLY, **fields}
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic(api_key=API_KEY)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def make_model(fake: FakeAnthropic) -> AsyncIterator[Callable[..., AnthropicChatModel]]:
    models: list[AnthropicChatModel] = []

    def make(
        timeout: float = 10.0,
        *,
        default_max_tokens: int = 4096,
        sampling: SamplingPolicy = "reject",
        api_key: str = API_KEY,
        base_url: str | None = None,
    ) -> AnthropicChatModel:
        client = create_client(
            api_key=api_key,
            base_url=base_url or fake.base_url,
            timeout=timeout,
            connect_timeout=5.0,
        )
        models.append(
            AnthropicChatModel(client, default_max_tokens=default_max_tokens, sampling=sampling)
        )
        return models[-1]

    yield make
    for model in models:
        await model.aclose()


async def _collect(model: AnthropicChatModel, request: ChatRequest, name: str) -> list[StreamEvent]:
    return [event async for event in model.stream(request, name)]


# --- the request on the wire -------------------------------------------------------------


async def test_the_request_is_translated_to_the_messages_api(
    fake: FakeAnthropic, make_model: Callable[..., AnthropicChatModel]
) -> None:
    request = _request(
        MESSAGES,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": WEATHER_SCHEMA, "strict": True},
        },
        max_tokens=50,
        stop="END",
        metadata={"user_id": "user-7", "tenant": "acme"},
    )

    await _collect(make_model(), request, "claude-x")

    [recorded] = fake.message_requests()
    assert recorded.headers["Authorization"] == f"Bearer {API_KEY}"
    assert recorded.headers["anthropic-version"]
    assert recorded.headers["x-stainless-retry-count"] == "0"
    assert recorded.body == {
        "model": "claude-x",
        "max_tokens": 50,
        "stream": True,
        "system": "Be brief.\n\nAnswer in French.",
        "messages": EXPECTED_MESSAGES,
        "tools": EXPECTED_TOOLS,
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-7"},
        "output_config": {"format": {"type": "json_schema", "schema": WEATHER_SCHEMA}},
    }


async def test_a_minimal_request_takes_the_default_max_tokens_and_sends_nothing_else(
    fake: FakeAnthropic, make_model: Callable[..., AnthropicChatModel]
) -> None:
    await _collect(
        make_model(default_max_tokens=321),
        _request(metadata={"tenant": "acme"}, response_format={"type": "text"}),
        "claude-x",
    )

    assert fake.message_requests()[0].body == {
        "model": "claude-x",
        "max_tokens": 321,
        "stream": True,
        "messages": [{"role": "user", "content": "hello there"}],
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"type": "tool", "name": "get_time"},
        ),
    ],
    ids=["auto", "none", "required", "named"],
)
async def test_tool_choice_maps_to_anthropics_variants(
    fake: FakeAnthropic,
    make_model: Callable[..., AnthropicChatModel],
    choice: Any,
    expected: dict[str, str],
) -> None:
    await _collect(make_model(), _request(tools=TOOLS, tool_choice=choice), "claude-x")

    body = fake.message_requests()[0].body
    assert body["tool_choice"] == expected
    assert body["tools"] == EXPECTED_TOOLS


async def test_tool_choice_without_tools_is_left_out(
    fake: FakeAnthropic, make_model: Callable[..., AnthropicChatModel]
) -> None:
    await _collect(make_model(), _request(tool_choice="none"), "claude-x")

    body = fake.message_requests()[0].body
    assert "tool_choice" not in body
    assert "tools" not in body


async def test_a_list_of_stop_sequences_is_sent_as_is(
    fake: FakeAnthropic, make_model: Callable[..., AnthropicChatModel]
) -> None:
    await _collect(make_model(), _request(stop=["END", "STOP"]), "claude-x")

    assert fake.message_requests()[0].body["stop_sequences"] == ["END", "STOP"]


async def test_sampling_parameters_are_rejected_by_default_without_calling_anthropic(
    fake: FakeAnthropic, make_model: Callable[..., AnthropicChatModel]
) -> None:
    with pytest.raises(FerrymanError) as failure:
        await _collect(make_model(), _request(temperature=0.2, top_p=0.9), "claude-x")

    assert failure.value.code is ErrorCode.INVALID_REQUEST
    assert failure.value.retryable is False
    assert failure.value.message == (
        "temperature and top_p are not supported by anthropic (its API rejects sampling parameters)"
    )
    assert fake.message_requests() == []


@pytest.mark.parametrize(
    ("sampling", "sent"),
    [("drop", {}), ("send", {"temperature": 0.2, "top_p": 0.9})],
)
async def test_sampling_parameters_can_be_dropped_or_sent(
    fake: FakeAnthropic,
    make_model: Callable[..., AnthropicChatModel],
    sampling: SamplingPolicy,
    sent: dict[str, float],
) -> None:
    await _collect(make_model(sampling=sampling), _request(temperature=0.2, top_p=0.9), "claude-x")

    body = fake.message_requests()[0].body
    assert {k: v for k, v in body.items() if k in ("temperature", "top_p")} == sent


async def test_an_unexpressible_request_fails_before_any_call(
    fake: FakeAnthropic, make_model: Callable[..., AnthropicChatModel]
) -> None:
    model = make_model()

    with pytest.raises(FerrymanError) as failure:
        await model.generate(_request(response_format={"type": "json_object"}), "claude-x")

    assert failure.value.code is ErrorCode.INVALID_REQUEST
    assert failure.value.message == "response_format json_object is not supported by anthropic"
    assert failure.value.upstream == "anthropic"
    assert fake.message_requests() == []


# --- the answer stream -------------------------------------------------------------------


async def test_a_text_stream_yields_deltas_then_usage_then_finish(
    fake: FakeAnthropic, make_model: Callable[..., AnthropicChatModel]
) -> None:
    fake.scenarios["m-text"] = Scenario(
        answer="The weather is sunny today", response_model="claude-served-20250101"
    )
    model = make_model()

    events = await _collect(model, _request(), "m-text")

    *texts, usage, finish = events
    assert texts == [TextDelta(text=t) for t in ["The", " weather", " is", " sunny", " today"]]
    assert usage == UsageReport(input_tokens=2, output_tokens=5)
    assert finish == Finish(reason="stop", model="claude-served-20250101")

    completion = await fold(model.stream(_request(), "m-text"))

    assert completion.content == "The weather is sunny today"
    assert completion.tool_calls == []
    assert completion.finish_reason == "stop"
    assert (completion.usage.input_tokens, completion.usage.output_tokens) == (2, 5)
    assert completion.model == "claude-served-20250101"


async def test_tool_calls_after_a_text_block_are_indexed_by_call_not_by_content_block(
    fake: FakeAnthropic, make_model: Callable[..., AnthropicChatModel]
) -> None:
    fake.scenarios["m-tools"] = Scenario(preamble="Let me look.", tool_calls=TOOL_CALLS)
    model = make_model()

    events = await _collect(model, _request(tools=TOOLS), "m-tools")

    texts = [e for e in events if isinstance(e, TextDelta)]
    assert "".join(t.text for t in texts) == "Let me look."
    fragments = [e for e in events if isinstance(e, ToolCallFragment)]
    # Anthropic's blocks are 0 (text), 1 and 2 (tools); ours count tool calls only.
    assert sorted({f.index for f in fragments}) == [0, 1]
    assert [f.index for f in fragments] == sorted(f.index for f in fragments)
    for index, call in enumerate(TOOL_CALLS):
        own = [f for f in fragments if f.index == index]
        assert len(own) > 2, "the fake streams arguments in several fragments"
        assert (own[0].id, own[0].name, own[0].arguments) == (f"toolu_{index}", call["name"], None)
        assert all(f.id is None and f.name is None for f in own[1:])
        arguments = "".join(f.arguments or "" for f in own)
        assert arguments == call["arguments"]
        json.loads(arguments)
    assert events[-1] == Finish(reason="tool_calls", model="m-tools")

    completion = await fold(model.stream(_request(tools=TOOLS), "m-tools"))

    assert completion.finish_reason == "tool_calls"
    assert completion.content == "Let me look."
    assert [(c.id, c.name, c.arguments) for c in completion.tool_calls] == [
        (f"toolu_{i}", c["name"], c["arguments"]) for i, c in enumerate(TOOL_CALLS)
    ]


async def test_a_single_tool_call_without_input_deltas_folds_to_empty_object_arguments(
    fake: FakeAnthropic, make_model: Callable[..., AnthropicChatModel]
) -> None:
    fake.scenarios["m-noargs"] = Scenario(tool_calls=[{"name": "get_time", "arguments": ""}])

    events = await _collect(make_model(), _request(tools=TOOLS), "m-noargs")

    assert [e for e in events if isinstance(e, ToolCallFragment)] == [
        ToolCallFragment(index=0, id="toolu_0", name="get_time"),
        ToolCallFragment(index=0, arguments="{}"),
    ]
    completion = await fold(_aiter(events))
    assert [(c.id, c.name, c.arguments) for c in completion.tool_calls] == [
        ("toolu_0", "get_time", "{}")
    ]


async def _aiter(events: list[StreamEvent]) -> AsyncIterator[StreamEvent]:
    for event in events:
        yield event


async def test_usage_counts_cached_input_as_part_of_the_input(
    fake: FakeAnthropic, make_model: Callable[..., AnthropicChatModel]
) -> None:
    fake.scenarios["m-cache"] = Scenario(
        answer="a b c", cache_read_input_tokens=40, cache_creation_input_tokens=5
    )

    events = await _collect(make_model(), _request(), "m-cache")

    [usage] = [e for e in events if isinstance(e, UsageReport)]
    # Anthropic's input_tokens (2 here) excludes cache reads and writes.
    assert usage == UsageReport(
        input_tokens=2 + 40 + 5, output_tokens=3, cached_input_tokens=40, cache_write_tokens=5
    )


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
    ],
)
async def test_stop_reasons_map_to_finish_reasons(
    fake: FakeAnthropic,
    make_model: Callable[..., AnthropicChatModel],
    stop_reason: str,
    finish: str,
) -> None:
    fake.scenarios["m-stop"] = Scenario(answer="partial", stop_reason=stop_reason)

    completion = await fold(make_model().stream(_request(), "m-stop"))

    assert completion.finish_reason == finish
    assert completion.content == "partial"


@pytest.mark.parametrize(
    "scenario",
    [Scenario(answer="one two three"), Scenario(preamble="On it.", tool_calls=TOOL_CALLS)],
    ids=["text", "tools"],
)
async def test_generate_returns_the_same_completion_as_folding_the_stream(
    fake: FakeAnthropic, make_model: Callable[..., AnthropicChatModel], scenario: Scenario
) -> None:
    fake.scenarios["m-same"] = scenario
    model = make_model()

    generated = await model.generate(_request(tools=TOOLS), "m-same")
    streamed = await fold(model.stream(_request(tools=TOOLS), "m-same"))

    assert generated == streamed
    assert generated.model == "m-same"
    assert [r.body["stream"] for r in fake.message_requests()] == [True, True]


async def test_a_stream_without_message_stop_still_finishes_after_message_delta(
    fake: FakeAnthropic, make_model: Callable[..., AnthropicChatModel]
) -> None:
    fake.scenarios["m-nostop"] = Scenario(answer="a b", send_message_stop=False)

    events = await _collect(make_model(), _request(), "m-nostop")

    assert events[0] == TextDelta(text="a")
    assert events[-1] == Finish(reason="stop", model="m-nostop")


# --- errors ------------------------------------------------------------------------------

_ERRORS: list[tuple[Scenario, ErrorCode, bool, float | None]] = [
    (Scenario(status=429, headers={"retry-after": "2"}), ErrorCode.RATE_LIMITED, True, 2.0),
    (Scenario(status=429, headers={"retry-after-ms": "1500"}), ErrorCode.RATE_LIMITED, True, 1.5),
    (Scenario(status=529, headers={"retry-after": "3"}), ErrorCode.UNAVAILABLE, True, 3.0),
    (Scenario(status=401), ErrorCode.AUTH, False, None),
    (Scenario(status=403), ErrorCode.PERMISSION_DENIED, False, None),
    (Scenario(status=402), ErrorCode.AUTH, False, None),
    (Scenario(status=408), ErrorCode.TIMEOUT, True, None),
    (Scenario(status=504), ErrorCode.TIMEOUT, True, None),
    (
        Scenario(status=400, error_message="prompt is too long: 207791 tokens > 200000 maximum"),
        ErrorCode.CONTEXT_LENGTH,
        False,
        None,
    ),
    (
        Scenario(status=413, error_message="Request size exceeds model context window"),
        ErrorCode.CONTEXT_LENGTH,
        False,
        None,
    ),
    (Scenario(status=413), ErrorCode.TOO_LARGE, False, None),
    (Scenario(status=400), ErrorCode.INVALID_REQUEST, False, None),
    (Scenario(status=404), ErrorCode.NOT_FOUND, False, None),
    (Scenario(status=409), ErrorCode.UNAVAILABLE, True, None),
    (Scenario(status=500), ErrorCode.UNAVAILABLE, True, None),
    (Scenario(status=503), ErrorCode.UNAVAILABLE, True, None),
]


@pytest.mark.parametrize(
    ("scenario", "code", "retryable", "retry_after"),
    _ERRORS,
    ids=[f"{s.status}-{(s.error_message or '')[:12]}-{','.join(s.headers)}" for s, *_ in _ERRORS],
)
async def test_http_errors_map_to_the_shared_taxonomy(
    fake: FakeAnthropic,
    make_model: Callable[..., AnthropicChatModel],
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
        assert error.upstream == "anthropic"
        assert API_KEY not in error.message
        assert API_KEY not in repr(error)
    assert len(fake.message_requests()) == 2, "SDK retries are off"


async def test_rejected_credentials_give_a_fixed_message(
    make_model: Callable[..., AnthropicChatModel],
) -> None:
    wrong_key = "sk-ant-wrong-SECRET-9999"

    with pytest.raises(FerrymanError) as failure:
        await _collect(make_model(api_key=wrong_key), _request(), "claude-x")

    assert failure.value.code is ErrorCode.AUTH
    assert failure.value.status == 401
    assert failure.value.message == "Anthropic rejected the credentials (401)"
    assert wrong_key not in repr(failure.value)


async def test_an_unreachable_server_is_unavailable(
    make_model: Callable[..., AnthropicChatModel],
) -> None:
    stopped = FakeAnthropic()
    await stopped.start()
    base_url = stopped.base_url
    await stopped.stop()

    with pytest.raises(FerrymanError) as failure:
        await _collect(make_model(base_url=base_url), _request(), "claude-x")

    assert failure.value.code is ErrorCode.UNAVAILABLE
    assert failure.value.retryable is True


async def test_a_slow_server_times_out(
    fake: FakeAnthropic, make_model: Callable[..., AnthropicChatModel]
) -> None:
    fake.scenarios["m-slow"] = Scenario(delay_before_headers=2.0)

    with pytest.raises(FerrymanError) as failure:
        await _collect(make_model(timeout=0.3), _request(), "m-slow")

    assert failure.value.code is ErrorCode.TIMEOUT
    assert failure.value.retryable is True


async def _events_until_failure(
    model: AnthropicChatModel, name: str
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
        (Scenario(answer="a b c d e", end_after=2), ErrorCode.UNAVAILABLE, 2),
        (Scenario(answer="a b c d e", error_event_after=2), ErrorCode.UNAVAILABLE, 2),
        (Scenario(answer="a b c d e", malformed_after=1), ErrorCode.UNAVAILABLE, 1),
        (Scenario(answer="a b c d e", stall_after=1), ErrorCode.TIMEOUT, 1),
    ],
    ids=["cut", "clean-eof", "error-event", "malformed", "stall"],
)
async def test_a_stream_failing_midway_raises_a_retryable_error_and_never_finishes(
    fake: FakeAnthropic,
    make_model: Callable[..., AnthropicChatModel],
    scenario: Scenario,
    code: ErrorCode,
    delivered: int,
) -> None:
    fake.scenarios["m-fault"] = scenario

    events, error = await _events_until_failure(make_model(timeout=0.5), "m-fault")

    assert error.code is code
    assert error.retryable is True
    assert error.upstream == "anthropic"
    assert events == [TextDelta(text=t) for t in ["a", " b", " c"][:delivered]]


@pytest.mark.parametrize(
    ("error_type", "code", "retryable"),
    [
        ("overloaded_error", ErrorCode.UNAVAILABLE, True),
        ("api_error", ErrorCode.UNAVAILABLE, True),
        ("rate_limit_error", ErrorCode.RATE_LIMITED, True),
        ("timeout_error", ErrorCode.TIMEOUT, True),
        ("invalid_request_error", ErrorCode.INVALID_REQUEST, False),
        ("brand_new_error", ErrorCode.UNAVAILABLE, True),
    ],
)
async def test_an_in_stream_error_event_maps_by_its_type(
    fake: FakeAnthropic,
    make_model: Callable[..., AnthropicChatModel],
    error_type: str,
    code: ErrorCode,
    retryable: bool,
) -> None:
    fake.scenarios["m-event"] = Scenario(
        answer="a b c", error_event_after=1, error_event_type=error_type
    )

    events, error = await _events_until_failure(make_model(), "m-event")

    assert (error.code, error.retryable, error.status) == (code, retryable, None)
    assert error_type in error.message
    assert events == [TextDelta(text="a")]


async def test_generate_fails_rather_than_returning_a_truncated_answer(
    fake: FakeAnthropic, make_model: Callable[..., AnthropicChatModel]
) -> None:
    fake.scenarios["m-trunc"] = Scenario(answer="a b c d", end_after=2)

    with pytest.raises(FerrymanError) as failure:
        await make_model().generate(_request(), "m-trunc")

    assert failure.value.code is ErrorCode.UNAVAILABLE
    assert failure.value.retryable is True


# --- models ------------------------------------------------------------------------------


async def test_list_models_follows_pages_and_returns_sorted_ids(
    fake: FakeAnthropic, make_model: Callable[..., AnthropicChatModel]
) -> None:
    fake.models = list(reversed(DEFAULT_MODELS))

    assert await make_model().list_models() == sorted(DEFAULT_MODELS)
    pages = [(r.method, r.path, r.query) for r in fake.requests]
    assert pages == [
        ("GET", "/v1/models", {}),
        ("GET", "/v1/models", {"after_id": fake.models[1]}),
    ]


async def test_list_models_maps_errors(make_model: Callable[..., AnthropicChatModel]) -> None:
    with pytest.raises(FerrymanError) as failure:
        await make_model(api_key="sk-ant-wrong").list_models()

    assert failure.value.code is ErrorCode.AUTH


async def test_the_fake_also_accepts_the_x_api_key_header(fake: FakeAnthropic) -> None:
    async with httpx2.AsyncClient(base_url=fake.base_url) as client:
        accepted = await client.get(
            "/v1/models", headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
        )
        refused = await client.get("/v1/models", headers={"anthropic-version": "2023-06-01"})

    assert accepted.status_code == 200
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"


async def test_max_tokens_defaults_per_model_then_to_the_provider_default(
    fake: FakeAnthropic,
) -> None:
    client = create_client(
        api_key=API_KEY, base_url=fake.base_url, timeout=10.0, connect_timeout=10.0
    )
    model = AnthropicChatModel(
        client, default_max_tokens=1000, max_tokens_by_model={"claude-big": 64000}
    )
    request = ChatRequest.model_validate(
        {"model": "anthropic/x", "messages": [{"role": "user", "content": "hi"}]}
    )
    try:
        await fold(model.stream(request, "claude-big"))
        await fold(model.stream(request, "claude-small"))
    finally:
        await model.aclose()

    assert [r.body["max_tokens"] for r in fake.message_requests()] == [64000, 1000]
