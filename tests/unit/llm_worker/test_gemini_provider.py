"""The Gemini adapter, driving the real `google-genai` SDK against the in-process fake server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
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
from llm_worker.providers.gemini import GeminiChatModel, create_client
from tests.fakes.gemini_server import FakeGemini, RecordedRequest, Scenario
from tests.virtual_time import on_virtual_time

API_KEY = "AIza-test-SECRET-key-0042"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n-fake-image").decode()
# Bytes whose standard base64 has '+' and '/', and a length that needs padding.
SIGNATURE = bytes([0xFB, 0xFF, 0xBF, 0x00, 0x01, 0x3E, 0x3F, 0x7F])
SIGNATURE_B64 = base64.b64encode(SIGNATURE).decode()
# The SDK (pydantic) sends bytes as URL-safe base64; proto3 JSON accepts both alphabets.
SIGNATURE_SENT = base64.urlsafe_b64encode(SIGNATURE).decode()

MessageList = list[dict[str, Any]]
TOOLS: MessageList = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "get_time"}},
]
WEATHER_CALL_ID = f"call_w~ts~{base64.urlsafe_b64encode(SIGNATURE).decode().rstrip('=')}"
MESSAGES: MessageList = [
    {"role": "system", "content": "Be brief."},
    {"role": "system", "content": [{"type": "text", "text": "Answer in English."}]},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Weather here?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a/photo.webp?x=1"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/blob"}},
        ],
    },
    {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": WEATHER_CALL_ID,
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {"id": "call_t", "type": "function", "function": {"name": "get_time", "arguments": ""}},
        ],
    },
    {"role": "tool", "content": '{"sky": "sunny", "c": 21}', "tool_call_id": WEATHER_CALL_ID},
    {"role": "tool", "content": "12:00", "tool_call_id": "call_t"},
    {"role": "user", "content": "Thanks. And tomorrow?"},
]
EXPECTED_CONTENTS: MessageList = [
    {
        "role": "user",
        "parts": [
            {"text": "Weather here?"},
            {"inlineData": {"data": PNG, "mime_type": "image/png"}},
            {
                "fileData": {
                    "file_uri": "https://example.com/a/photo.webp?x=1",
                    "mime_type": "image/webp",
                }
            },
            {"fileData": {"file_uri": "https://example.com/blob", "mime_type": "image/jpeg"}},
        ],
    },
    {
        "role": "model",
        "parts": [
            {"text": "Checking."},
            {
                "functionCall": {"id": "call_w", "name": "get_weather", "args": {"city": "Paris"}},
                "thoughtSignature": SIGNATURE_SENT,
            },
            {"functionCall": {"id": "call_t", "name": "get_time", "args": {}}},
        ],
    },
    {
        "role": "user",
        "parts": [
            {
                "functionResponse": {
                    "id": "call_w",
                    "name": "get_weather",
                    "response": {"sky": "sunny", "c": 21},
                }
            },
            {
                "functionResponse": {
                    "id": "call_t",
                    "name": "get_time",
                    "response": {"result": "12:00"},
                }
            },
        ],
    },
    {"role": "user", "parts": [{"text": "Thanks. And tomorrow?"}]},
]
EXPECTED_TOOLS: MessageList = [
    {
        "functionDeclarations": [
            {
                "name": "get_weather",
                "description": "Current weather.",
                "parameters_json_schema": TOOLS[0]["function"]["parameters"],
            },
            {"name": "get_time"},
        ]
    }
]


def _request(messages: MessageList | None = None, **fields: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "gemini/x", "messages": messages or [{"role": "user", "content": "hi"}], **fields}
    )


@contextlib.asynccontextmanager
async def _serving() -> AsyncIterator[tuple[FakeGemini, Callable[..., GeminiChatModel]]]:
    """A started fake server and a factory of models pointed at it (closed at exit)."""
    fake = FakeGemini()
    await fake.start()
    models: list[GeminiChatModel] = []

    def make(
        timeout: float = 10.0,
        safety_settings: dict[str, str] | None = None,
        base_url: str | None = None,
        api_version: str = "v1",
    ) -> GeminiChatModel:
        client = create_client(
            api_key=API_KEY,
            base_url=base_url or fake.base_url,
            api_version=api_version,
            timeout=timeout,
        )
        models.append(GeminiChatModel(client, safety_settings=safety_settings))
        return models[-1]

    try:
        yield fake, make
    finally:
        for model in models:
            await model.aclose()
        await fake.stop()


@pytest.fixture
async def serving() -> AsyncIterator[tuple[FakeGemini, Callable[..., GeminiChatModel]]]:
    async with _serving() as both:
        yield both


@pytest.fixture
def fake(serving: tuple[FakeGemini, Callable[..., GeminiChatModel]]) -> FakeGemini:
    return serving[0]


@pytest.fixture
def make_model(
    serving: tuple[FakeGemini, Callable[..., GeminiChatModel]],
) -> Callable[..., GeminiChatModel]:
    return serving[1]


async def _collect(model: GeminiChatModel, request: ChatRequest, name: str) -> list[StreamEvent]:
    return [event async for event in model.stream(request, name)]


def _only(fake: FakeGemini) -> RecordedRequest:
    [recorded] = fake.generate_requests()
    return recorded


# --- the request on the wire ----------------------------------------------------------------


async def test_the_request_is_translated_to_gemini_contents_and_config(
    fake: FakeGemini, make_model: Callable[..., GeminiChatModel]
) -> None:
    fake.scenarios["m-wire"] = Scenario(answer="ok")
    request = _request(
        MESSAGES,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
        },
        temperature=0.2,
        top_p=0.9,
        max_tokens=50,
        stop=["END", "STOP"],
        metadata={
            "gemini_safety": json.dumps(
                {"HARM_CATEGORY_HARASSMENT": "BLOCK_NONE", "HARM_CATEGORY_HATE_SPEECH": "OFF"}
            ),
            "trace": "unrelated",
        },
    )
    model = make_model(
        safety_settings={
            "HARM_CATEGORY_HARASSMENT": "BLOCK_ONLY_HIGH",
            "HARM_CATEGORY_DANGEROUS_CONTENT": "BLOCK_LOW_AND_ABOVE",
        }
    )

    await _collect(model, request, "m-wire")

    recorded = _only(fake)
    assert recorded.path == "/v1/models/m-wire:streamGenerateContent"
    assert recorded.query == {"alt": "sse"}
    assert recorded.headers["x-goog-api-key"] == API_KEY
    assert recorded.body == {
        "contents": EXPECTED_CONTENTS,
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in English."}]},
        "tools": EXPECTED_TOOLS,
        "toolConfig": {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
        },
        "safetySettings": [
            {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"},
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "threshold": "BLOCK_LOW_AND_ABOVE"},
            {"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "OFF"},
        ],
        "generationConfig": {
            "temperature": 0.2,
            "topP": 0.9,
            "maxOutputTokens": 50,
            "stopSequences": ["END", "STOP"],
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object"},
        },
    }


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
        ),
        (None, None),
    ],
    ids=["auto", "none", "required", "named", "unset"],
)
async def test_tool_choice_maps_to_the_function_calling_config(
    fake: FakeGemini,
    make_model: Callable[..., GeminiChatModel],
    tool_choice: Any,
    expected: dict[str, Any] | None,
) -> None:
    await make_model().generate(_request(tools=TOOLS, tool_choice=tool_choice), "m-choice")

    body = _only(fake).body
    assert body["tools"] == EXPECTED_TOOLS
    if expected is None:
        assert "toolConfig" not in body
    else:
        assert body["toolConfig"] == {"functionCallingConfig": expected}


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "json_object"}, {"responseMimeType": "application/json"}),
        ({"type": "text"}, {}),
        (None, {}),
    ],
    ids=["json_object", "text", "unset"],
)
async def test_json_mode_sets_the_response_mime_type(
    fake: FakeGemini,
    make_model: Callable[..., GeminiChatModel],
    response_format: dict[str, Any] | None,
    expected: dict[str, Any],
) -> None:
    await make_model().generate(_request(response_format=response_format), "m-json")

    body = _only(fake).body
    assert body["generationConfig"] == expected  # the SDK always sends the object
    assert "tools" not in body
    assert "systemInstruction" not in body
    assert "safetySettings" not in body


async def test_the_non_streaming_path_posts_generate_content_on_the_configured_version(
    fake: FakeGemini, make_model: Callable[..., GeminiChatModel]
) -> None:
    fake.scenarios["m-beta"] = Scenario(answer="fine")

    completion = await make_model(api_version="v1beta").generate(_request(), "m-beta")

    assert completion.content == "fine"
    recorded = _only(fake)
    assert recorded.path == "/v1beta/models/m-beta:generateContent"
    assert recorded.body == {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "generationConfig": {},
    }


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [
        ({"gemini_safety": "not json"}, "not valid JSON"),
        ({"gemini_safety": '["BLOCK_NONE"]'}, "must be a JSON object"),
        ({"gemini_safety": '{"HARM_CATEGORY_NOPE": "BLOCK_NONE"}'}, "HARM_CATEGORY_NOPE"),
        ({"gemini_safety": '{"HARM_CATEGORY_HARASSMENT": "BLOCK_ALL"}'}, "BLOCK_ALL"),
        ({"gemini_safety": '{"HARM_CATEGORY_HARASSMENT": 3}'}, "must be strings"),
    ],
    ids=["not-json", "not-object", "bad-category", "bad-threshold", "not-string"],
)
async def test_an_invalid_safety_override_is_an_invalid_request_and_sends_nothing(
    fake: FakeGemini,
    make_model: Callable[..., GeminiChatModel],
    metadata: dict[str, str],
    fragment: str,
) -> None:
    with pytest.raises(FerrymanError) as failure:
        await _collect(make_model(), _request(metadata=metadata), "m-safety")

    assert failure.value.code is ErrorCode.INVALID_REQUEST
    assert failure.value.retryable is False
    assert fragment in failure.value.message
    assert fake.generate_requests() == []


@pytest.mark.parametrize(
    "name",
    ["../v1beta/models/other", "gemini-fake/../../x", "gemini-fake?alt=json", "a b", "%2e%2e", ""],
)
@pytest.mark.parametrize("call", ["stream", "generate"])
async def test_a_model_name_that_would_change_the_url_is_an_invalid_request_and_sends_nothing(
    fake: FakeGemini, make_model: Callable[..., GeminiChatModel], name: str, call: str
) -> None:
    model = make_model()
    with pytest.raises(FerrymanError) as failure:
        await (
            _collect(model, _request(), name)
            if call == "stream"
            else model.generate(_request(), name)
        )

    assert (failure.value.code, failure.value.retryable) == (ErrorCode.INVALID_REQUEST, False)
    assert "not a plain model name" in failure.value.message
    assert fake.requests == []


@pytest.mark.parametrize("name", ["gemini-2.5-flash", "models/gemini-fake", "gemini-1.5-pro-002"])
async def test_plain_model_names_are_sent(
    fake: FakeGemini, make_model: Callable[..., GeminiChatModel], name: str
) -> None:
    await _collect(make_model(), _request(), name)

    assert _only(fake).path.endswith(
        f"/models/{name.removeprefix('models/')}:streamGenerateContent"
    )


def test_invalid_deployment_safety_settings_are_refused_at_construction() -> None:
    client = create_client(api_key=API_KEY, base_url="http://127.0.0.1:9/", timeout=1.0)
    with pytest.raises(ValueError, match="HARM_CATEGORY_TYPO"):
        GeminiChatModel(client, safety_settings={"HARM_CATEGORY_TYPO": "BLOCK_NONE"})
    client.close()


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        (
            [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": "{not json"},
                        }
                    ],
                },
            ],
            "not JSON",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "tool", "content": "x", "tool_call_id": "never-made"},
            ],
            "never-made",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}],
                }
            ],
            "'ftp'",
        ),
    ],
    ids=["bad-arguments", "unknown-tool-call", "bad-image-scheme"],
)
async def test_what_gemini_cannot_express_is_an_invalid_request(
    fake: FakeGemini,
    make_model: Callable[..., GeminiChatModel],
    messages: MessageList,
    fragment: str,
) -> None:
    with pytest.raises(FerrymanError) as failure:
        await make_model().generate(_request(messages), "m-invalid")

    assert failure.value.code is ErrorCode.INVALID_REQUEST
    assert fragment in failure.value.message
    assert fake.generate_requests() == []


# --- the answer -----------------------------------------------------------------------------


async def test_a_text_stream_yields_deltas_then_usage_then_finish(
    fake: FakeGemini, make_model: Callable[..., GeminiChatModel]
) -> None:
    fake.scenarios["m-text"] = Scenario(
        answer="The weather is sunny today", thought="secret reasoning", thoughts_tokens=4
    )
    model = make_model()

    events = await _collect(model, _request(), "m-text")

    *texts, usage, finish = events
    assert texts == [TextDelta(text=t) for t in ["The", " weather", " is", " sunny", " today"]], (
        "the thought part is not part of the answer"
    )
    assert usage == UsageReport(
        input_tokens=1, output_tokens=6 + 4, cached_input_tokens=None, reasoning_tokens=4
    )
    assert finish == Finish(reason="stop", model="m-text-001")

    completion = await fold(model.stream(_request(), "m-text"))

    assert completion.content == "The weather is sunny today"
    assert completion.tool_calls == []
    assert completion.finish_reason == "stop"
    assert completion.usage.output_tokens == 10


async def test_usage_counts_cached_thought_and_tool_use_tokens(
    fake: FakeGemini, make_model: Callable[..., GeminiChatModel]
) -> None:
    fake.scenarios["m-usage"] = Scenario(
        answer="a b", cached_tokens=3, thoughts_tokens=5, tool_use_prompt_tokens=2
    )

    events = await _collect(make_model(), _request(), "m-usage")

    [usage] = [e for e in events if isinstance(e, UsageReport)]
    # Like OpenAI: cached ⊂ input, reasoning ⊂ output; the last chunk's running total counts.
    assert usage == UsageReport(
        input_tokens=1 + 2, output_tokens=2 + 5, cached_input_tokens=3, reasoning_tokens=5
    )


async def test_parallel_function_calls_get_stable_indexes_ids_and_complete_json_arguments(
    fake: FakeGemini, make_model: Callable[..., GeminiChatModel]
) -> None:
    calls = [
        {"name": "get_weather", "args": {"city": "Paris", "unit": "°C"}, "id": "g-1"},
        {"name": "get_time", "args": {}},
        {"name": "get_weather", "args": {"city": "Oslo"}},
    ]
    fake.scenarios["m-par"] = Scenario(answer="Let me check.", function_calls=calls)

    events = await _collect(make_model(), _request(tools=TOOLS), "m-par")

    assert events[0] == TextDelta(text="Let me check.")
    fragments = [e for e in events if isinstance(e, ToolCallFragment)]
    assert [f.index for f in fragments] == [0, 1, 2]
    assert [f.name for f in fragments] == ["get_weather", "get_time", "get_weather"]
    assert [json.loads(f.arguments or "") for f in fragments] == [c["args"] for c in calls]
    assert fragments[0].id == "g-1"
    generated = [f.id or "" for f in fragments[1:]]
    assert all(i.startswith("call_") for i in generated)
    assert len(set(generated)) == 2
    assert events[-1] == Finish(reason="tool_calls", model="m-par-001")


async def test_calls_spread_over_chunks_keep_counting_and_fold_into_complete_calls(
    fake: FakeGemini, make_model: Callable[..., GeminiChatModel]
) -> None:
    calls = [
        {"name": "get_time", "args": {"tz": "UTC"}, "id": "a"},
        {"name": "get_time", "args": {"tz": "CET"}, "id": "b"},
    ]
    fake.scenarios["m-split"] = Scenario(function_calls=calls, calls_in_one_chunk=False)

    completion = await fold(make_model().stream(_request(tools=TOOLS), "m-split"))

    assert completion.finish_reason == "tool_calls"
    assert [(c.id, c.name, json.loads(c.arguments)) for c in completion.tool_calls] == [
        ("a", "get_time", {"tz": "UTC"}),
        ("b", "get_time", {"tz": "CET"}),
    ]


async def test_thought_signatures_survive_a_turn_byte_for_byte(
    fake: FakeGemini, make_model: Callable[..., GeminiChatModel]
) -> None:
    signed = bytes(range(256)) + b"\x00"  # every byte value, a length that needs padding
    calls = [
        {
            "name": "get_weather",
            "args": {"city": "Paris"},
            "thought_signature": base64.b64encode(signed).decode(),
        },
        {"name": "get_time", "args": {}, "id": "t-1"},
        {
            "name": "get_time",
            "args": {"tz": "UTC"},
            "id": "t-2",
            "thought_signature": SIGNATURE_B64,
        },
    ]
    fake.scenarios["m-sig"] = Scenario(function_calls=calls)
    model = make_model()

    completion = await fold(model.stream(_request(tools=TOOLS), "m-sig"))

    ids = [c.id for c in completion.tool_calls]
    assert ids[0].startswith("call_")
    assert "~ts~" in ids[0]
    assert ids[1] == "t-1"
    assert ids[2].startswith("t-2~ts~")
    next_turn = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in completion.tool_calls
            ],
        },
        *[
            {"role": "tool", "content": f"r{i}", "tool_call_id": c.id}
            for i, c in enumerate(completion.tool_calls)
        ],
    ]
    fake.scenarios["m-sig"] = Scenario(answer="done")

    await model.generate(_request(next_turn, tools=TOOLS), "m-sig")

    model_turn, results = fake.generate_requests()[-1].body["contents"][1:]
    parts = model_turn["parts"]
    assert [
        base64.urlsafe_b64decode(p["thoughtSignature"]) if "thoughtSignature" in p else None
        for p in parts
    ] == [signed, None, SIGNATURE]
    plain_ids = [ids[0].split("~ts~")[0], "t-1", "t-2"]
    assert [p["functionCall"]["id"] for p in parts] == plain_ids
    assert [p["functionCall"]["args"] for p in parts] == [c["args"] for c in calls]
    assert [r["functionResponse"]["id"] for r in results["parts"]] == plain_ids
    assert [r["functionResponse"]["name"] for r in results["parts"]] == [
        "get_weather",
        "get_time",
        "get_time",
    ]


async def test_a_signature_on_a_text_part_does_not_change_the_text(
    fake: FakeGemini, make_model: Callable[..., GeminiChatModel]
) -> None:
    fake.scenarios["m-textsig"] = Scenario(answer="a b", text_signature=SIGNATURE_B64)

    completion = await fold(make_model().stream(_request(), "m-textsig"))

    assert completion.content == "a b"


@pytest.mark.parametrize(
    "scenario",
    [
        Scenario(answer="one two three", cached_tokens=1),
        Scenario(
            function_calls=[
                {"name": "get_time", "args": {"tz": "UTC"}, "id": "x", "thought_signature": "AQID"}
            ]
        ),
    ],
    ids=["text", "tool-call"],
)
async def test_generate_returns_the_same_completion_as_folding_the_stream(
    fake: FakeGemini, make_model: Callable[..., GeminiChatModel], scenario: Scenario
) -> None:
    fake.scenarios["m-same"] = scenario
    model = make_model()

    generated = await model.generate(_request(), "m-same")
    streamed = await fold(model.stream(_request(), "m-same"))

    assert generated == streamed
    assert generated.model == "m-same-001"
    assert [r.path.rsplit(":", 1)[1] for r in fake.generate_requests()] == [
        "generateContent",
        "streamGenerateContent",
    ]


@pytest.mark.filterwarnings("ignore:SOMETHING_NEW is not a valid FinishReason")
@pytest.mark.parametrize(
    ("finish_reason", "expected"),
    [
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("OTHER", "stop"),
        ("SOMETHING_NEW", "stop"),
    ],
)
async def test_finish_reasons_map_to_ferrymans(
    fake: FakeGemini, make_model: Callable[..., GeminiChatModel], finish_reason: str, expected: str
) -> None:
    fake.scenarios["m-finish"] = Scenario(answer="partial answer", finish_reason=finish_reason)
    model = make_model()

    events = await _collect(model, _request(), "m-finish")
    generated = await model.generate(_request(), "m-finish")

    assert events[-1] == Finish(reason=expected, model="m-finish-001")  # type: ignore[arg-type]
    assert generated.finish_reason == expected
    assert generated.content == "partial answer"


async def test_a_safety_stop_with_a_function_call_stays_a_content_filter_finish(
    fake: FakeGemini, make_model: Callable[..., GeminiChatModel]
) -> None:
    fake.scenarios["m-sc"] = Scenario(
        function_calls=[{"name": "get_time", "args": {}}], finish_reason="SAFETY"
    )

    completion = await fold(make_model().stream(_request(tools=TOOLS), "m-sc"))

    assert completion.finish_reason == "content_filter"


@pytest.mark.parametrize(
    ("finish_reason", "code", "retryable"),
    [
        ("MALFORMED_FUNCTION_CALL", ErrorCode.UNAVAILABLE, True),
        ("UNEXPECTED_TOOL_CALL", ErrorCode.UNAVAILABLE, True),
        ("MISSING_THOUGHT_SIGNATURE", ErrorCode.INVALID_REQUEST, False),
    ],
)
async def test_finish_reasons_that_mean_failure_raise_instead_of_finishing(
    fake: FakeGemini,
    make_model: Callable[..., GeminiChatModel],
    finish_reason: str,
    code: ErrorCode,
    retryable: bool,
) -> None:
    fake.scenarios["m-fail"] = Scenario(answer="x", finish_reason=finish_reason)
    model = make_model()

    events, error = await _events_until_failure(model, "m-fail")
    with pytest.raises(FerrymanError) as generated:
        await model.generate(_request(), "m-fail")

    for failure in (error, generated.value):
        assert failure.code is code
        assert failure.retryable is retryable
        assert finish_reason in failure.message
    assert not [e for e in events if isinstance(e, Finish)]


async def test_a_blocked_prompt_is_a_content_filter_error_naming_reason_and_categories(
    fake: FakeGemini, make_model: Callable[..., GeminiChatModel]
) -> None:
    fake.scenarios["m-blocked"] = Scenario(
        block_reason="SAFETY",
        blocked_categories=["HARM_CATEGORY_HARASSMENT", "HARM_CATEGORY_DANGEROUS_CONTENT"],
    )
    model = make_model()

    events, streamed = await _events_until_failure(model, "m-blocked")
    with pytest.raises(FerrymanError) as generated:
        await model.generate(_request(), "m-blocked")

    assert events == []
    for error in (streamed, generated.value):
        assert error.code is ErrorCode.CONTENT_FILTER
        assert error.retryable is False
        assert error.upstream == "gemini"
        assert "SAFETY" in error.message
        assert "HARM_CATEGORY_HARASSMENT, HARM_CATEGORY_DANGEROUS_CONTENT" in error.message
        assert "HATE_SPEECH" not in error.message, "only blocked categories are named"


async def test_a_paused_answer_is_resumed_with_its_continuation_token(
    fake: FakeGemini, make_model: Callable[..., GeminiChatModel]
) -> None:
    fake.scenarios["m-cont"] = Scenario(answer="a b", continuation_hops=2)
    model = make_model()

    events = await _collect(model, _request(), "m-cont")

    texts = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert texts == "a@0 b@0 a@1 b@1 a@2 b@2"
    assert [e for e in events if isinstance(e, Finish)] == [
        Finish(reason="stop", model="m-cont-001")
    ]
    [usage] = [e for e in events if isinstance(e, UsageReport)]
    assert usage.input_tokens == 3 * 1
    assert usage.output_tokens == 3 * 2, "hops are separate requests: their usage adds up"
    bodies = [r.body for r in fake.generate_requests()]
    assert [b.get("continuationToken") for b in bodies] == [
        None,
        base64.b64encode(b"hop-1").decode(),
        base64.b64encode(b"hop-2").decode(),
    ]
    assert all(b["contents"] == bodies[0]["contents"] for b in bodies)

    completion = await model.generate(_request(), "m-cont")

    assert completion.content == texts


# --- failures -------------------------------------------------------------------------------

RETRY_INFO = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}]
KEY_INVALID = [
    {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
    }
]
_ERRORS: list[tuple[str, Scenario, ErrorCode, bool, float | None]] = [
    (
        "429-header",
        Scenario(status=429, headers={"retry-after": "2"}),
        ErrorCode.RATE_LIMITED,
        True,
        2.0,
    ),
    (
        "429-retryinfo",
        Scenario(status=429, error_details=RETRY_INFO),
        ErrorCode.RATE_LIMITED,
        True,
        12.0,
    ),
    (
        "429-both",
        Scenario(status=429, headers={"retry-after": "3"}, error_details=RETRY_INFO),
        ErrorCode.RATE_LIMITED,
        True,
        3.0,
    ),
    ("429-bare", Scenario(status=429), ErrorCode.RATE_LIMITED, True, None),
    (
        "400-key",
        Scenario(
            status=400,
            error_message=f"API key not valid: {API_KEY}",
            error_details=KEY_INVALID,
        ),
        ErrorCode.AUTH,
        False,
        None,
    ),
    ("401", Scenario(status=401, error_message=f"bad key {API_KEY}"), ErrorCode.AUTH, False, None),
    (
        "403",
        Scenario(status=403, error_message=f"denied {API_KEY}"),
        ErrorCode.PERMISSION_DENIED,
        False,
        None,
    ),
    (
        "400-context",
        Scenario(
            status=400,
            error_message="The input token count (1048577) exceeds the maximum number of"
            " tokens allowed (1048576).",
        ),
        ErrorCode.CONTEXT_LENGTH,
        False,
        None,
    ),
    ("400", Scenario(status=400), ErrorCode.INVALID_REQUEST, False, None),
    ("404", Scenario(status=404), ErrorCode.NOT_FOUND, False, None),
    ("408", Scenario(status=408), ErrorCode.TIMEOUT, True, None),
    ("500", Scenario(status=500), ErrorCode.UNAVAILABLE, True, None),
    ("503", Scenario(status=503, headers={"retry-after": "1"}), ErrorCode.UNAVAILABLE, True, None),
]


@pytest.mark.parametrize(
    ("scenario", "code", "retryable", "retry_after"),
    [e[1:] for e in _ERRORS],
    ids=[e[0] for e in _ERRORS],
)
async def test_http_errors_map_to_the_shared_taxonomy(
    fake: FakeGemini,
    make_model: Callable[..., GeminiChatModel],
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
        assert error.upstream == "gemini"
        assert API_KEY not in error.message
        assert API_KEY not in repr(error)
    if code is ErrorCode.AUTH:
        assert streamed.value.message == f"Gemini rejected the credentials ({scenario.status})"
    assert len(fake.generate_requests()) == 2, "the SDK does not retry"


async def _events_until_failure(
    model: GeminiChatModel, name: str
) -> tuple[list[StreamEvent], FerrymanError]:
    events: list[StreamEvent] = []

    async def drain() -> None:
        async for event in model.stream(_request(), name):
            events.append(event)

    with pytest.raises(FerrymanError) as failure:
        await drain()
    return events, failure.value


@pytest.mark.parametrize(
    ("scenario", "code", "status", "delivered"),
    [
        (Scenario(answer="a b c d e", cut_after=2), ErrorCode.UNAVAILABLE, None, 2),
        (Scenario(answer="a b c d e", error_event_after=2), ErrorCode.UNAVAILABLE, 503, 2),
        (
            Scenario(answer="a b c d e", error_event_after=1, error_event_code=429),
            ErrorCode.RATE_LIMITED,
            429,
            1,
        ),
        (Scenario(answer="a b c d e", malformed_after=1), ErrorCode.UNAVAILABLE, None, 1),
        (Scenario(answer="a b c d e", stall_after=1), ErrorCode.TIMEOUT, None, 1),
    ],
    ids=["cut", "error-event", "error-event-429", "malformed", "stall"],
)
async def test_a_stream_failing_midway_raises_a_retryable_error_and_never_finishes(
    fake: FakeGemini,
    make_model: Callable[..., GeminiChatModel],
    scenario: Scenario,
    code: ErrorCode,
    status: int | None,
    delivered: int,
) -> None:
    fake.scenarios["m-fault"] = scenario

    events, error = await _events_until_failure(make_model(timeout=0.5), "m-fault")

    assert error.code is code
    assert error.retryable is True
    assert error.status == status
    assert error.upstream == "gemini"
    assert events == [TextDelta(text=t) for t in ["a", " b", " c"][:delivered]]
    assert len(fake.generate_requests()) == 1, "no hidden reconnect"


async def test_a_stream_without_a_finish_reason_is_never_a_complete_answer(
    fake: FakeGemini, make_model: Callable[..., GeminiChatModel]
) -> None:
    fake.scenarios["m-nofinish"] = Scenario(answer="a b", send_finish_reason=False)
    model = make_model()

    events = await _collect(model, _request(), "m-nofinish")

    assert not [e for e in events if isinstance(e, Finish)]
    assert [e for e in events if isinstance(e, TextDelta)] == [
        TextDelta(text="a"),
        TextDelta(text=" b"),
    ]
    with pytest.raises(FerrymanError) as failure:
        await fold(model.stream(_request(), "m-nofinish"))
    assert failure.value.code is ErrorCode.UNAVAILABLE
    with pytest.raises(FerrymanError):
        await model.generate(_request(), "m-nofinish")


@on_virtual_time
async def test_the_timeout_bounds_the_wait_for_headers_but_not_a_slow_steady_stream() -> None:
    async with _serving() as (fake, make_model):
        fake.scenarios["m-slow-headers"] = Scenario(delay_before_headers=2.0)
        fake.scenarios["m-steady"] = Scenario(tokens=6, first_token_delay=0.3, token_delay=0.2)
        model = make_model(timeout=0.5)
        loop = asyncio.get_running_loop()

        started = loop.time()
        with pytest.raises(FerrymanError) as failure:
            await _collect(model, _request(), "m-slow-headers")
        assert failure.value.code is ErrorCode.TIMEOUT
        assert loop.time() - started == pytest.approx(0.5)  # the timeout, not the 2 s wait

        started = loop.time()
        completion = await fold(model.stream(_request(), "m-steady"))

        assert completion.content == "tok0 tok1 tok2 tok3 tok4 tok5"
        assert loop.time() - started == pytest.approx(0.3 + 5 * 0.2)  # longer than the timeout


@on_virtual_time
async def test_an_unreachable_endpoint_is_unavailable_at_once() -> None:
    async with _serving() as (_, make_model):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        model = make_model(base_url=f"http://127.0.0.1:{port}/")
        loop = asyncio.get_running_loop()

        started = loop.time()
        with pytest.raises(FerrymanError) as failure:
            await _collect(model, _request(), "m-any")

        assert failure.value.code is ErrorCode.UNAVAILABLE
        assert failure.value.retryable is True
        assert loop.time() == started, "no hidden retry (its backoff would move the clock)"


async def test_stopping_early_releases_the_stream(
    fake: FakeGemini, make_model: Callable[..., GeminiChatModel]
) -> None:
    fake.scenarios["m-early"] = Scenario(tokens=50, token_delay=0.01)
    model = make_model()

    stream = model.stream(_request(), "m-early")
    first = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]

    assert first == TextDelta(text="tok0")
    assert (await model.generate(_request(), "m-early")).content.startswith("tok0 tok1")


async def test_list_models_returns_every_page_without_the_models_prefix(
    fake: FakeGemini, make_model: Callable[..., GeminiChatModel]
) -> None:
    assert await make_model().list_models() == [
        "embedding-fake",
        "gemini-fake-flash",
        "gemini-fake-pro",
    ]
    assert [(r.method, r.path, r.query.get("pageToken")) for r in fake.requests] == [
        ("GET", "/v1/models", None),
        ("GET", "/v1/models", "page-2"),
    ]
    assert fake.requests[0].headers["x-goog-api-key"] == API_KEY


async def test_list_models_errors_are_mapped(
    fake: FakeGemini, make_model: Callable[..., GeminiChatModel]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(FerrymanError) as failure:
        await make_model(base_url=f"http://127.0.0.1:{port}/").list_models()

    assert failure.value.code is ErrorCode.UNAVAILABLE


async def test_a_candidate_stopped_for_safety_names_the_blocked_categories() -> None:
    from ferryman.contracts import ChatRequest
    from llm_worker.chat.streaming import fold
    from llm_worker.providers.gemini import GeminiChatModel, create_client
    from tests.fakes.gemini_server import FakeGemini
    from tests.fakes.gemini_server import Scenario as GeminiScenario

    fake = FakeGemini()
    await fake.start()
    fake.scenarios["g"] = GeminiScenario(
        answer="partial", finish_reason="SAFETY", blocked_categories=["HARM_CATEGORY_HARASSMENT"]
    )
    model = GeminiChatModel(create_client(api_key="k", base_url=fake.base_url, timeout=5))
    request = ChatRequest.model_validate(
        {"model": "gemini/g", "messages": [{"role": "user", "content": "x"}]}
    )
    try:
        completion = await fold(model.stream(request, "g"))
    finally:
        await model.aclose()
        await fake.stop()

    assert completion.finish_reason == "content_filter"
    assert completion.filtered_categories == ["HARM_CATEGORY_HARASSMENT"]
