"""Pure Anthropic translation: request edge cases and the raw-event mapper."""

from __future__ import annotations

from typing import Any

import pytest
from anthropic.types import (
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    RawMessageStreamEvent,
)

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from llm_worker.chat.streaming import (
    Finish,
    StreamEvent,
    TextDelta,
    ToolCallFragment,
    UsageReport,
    fold_events,
)
from llm_worker.providers.anthropic_mapping import EventMapper, to_anthropic_params

_EVENT_TYPES: dict[str, Any] = {
    "message_start": RawMessageStartEvent,
    "message_delta": RawMessageDeltaEvent,
    "message_stop": RawMessageStopEvent,
    "content_block_start": RawContentBlockStartEvent,
    "content_block_delta": RawContentBlockDeltaEvent,
    "content_block_stop": RawContentBlockStopEvent,
}


def _event(data: dict[str, Any]) -> RawMessageStreamEvent:
    return _EVENT_TYPES[data["type"]].model_validate(data)


def _start(usage: dict[str, Any] | None = None, model: str = "claude-m") -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage or {"input_tokens": 10, "output_tokens": 1},
        },
    }


def _block(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def _delta(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def _stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def _message_delta(stop_reason: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": usage or {"output_tokens": 7},
    }


def _run(*events: dict[str, Any]) -> list[StreamEvent]:
    mapper = EventMapper()
    out: list[StreamEvent] = []
    for data in events:
        out.extend(mapper.events(_event(data)))
    out.extend(mapper.finish())
    return out


def _request(messages: list[dict[str, Any]], **fields: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "anthropic/x", "messages": messages, **fields})


def _params(messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return to_anthropic_params(_request(messages, **fields), "claude-x", default_max_tokens=99)


def _assistant_call(arguments: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": arguments}}
            ],
        },
    ]


# --- requests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ('{"a": ', "tool call 'f' has arguments that are not valid JSON"),
        ("[1, 2]", "tool call 'f' has arguments that are not a JSON object"),
    ],
)
def test_unusable_tool_call_arguments_are_an_invalid_request(arguments: str, message: str) -> None:
    with pytest.raises(FerrymanError) as failure:
        _params(_assistant_call(arguments))

    assert (failure.value.code, failure.value.message) == (ErrorCode.INVALID_REQUEST, message)
    assert failure.value.retryable is False


def test_blank_tool_call_arguments_mean_no_arguments() -> None:
    assistant = _params(_assistant_call(" "))["messages"][1]

    assert assistant == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
    }


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/a.png", "data:image/svg+xml,<svg/>", "file:///etc/passwd"],
)
def test_unusable_image_urls_are_an_invalid_request(url: str) -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]

    with pytest.raises(FerrymanError) as failure:
        _params(messages)

    assert failure.value.code is ErrorCode.INVALID_REQUEST


def test_data_urls_with_parameters_keep_only_the_media_type() -> None:
    url = "data:Image/JPEG;name=a.jpg;base64,/9j/4AAQ"
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]

    [block] = _params(messages)["messages"][0]["content"]

    assert block == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"},
    }


def test_assistant_text_parts_and_empty_text_around_tool_calls() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": ""}],
        },
        {"role": "user", "content": "and?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "content": "done", "tool_call_id": "t1"},
    ]

    out = _params(messages)["messages"]

    assert out[1] == {"role": "assistant", "content": [{"type": "text", "text": "a"}]}
    assert out[3] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
    }
    assert out[4] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "done"}],
    }


def test_a_plain_assistant_turn_keeps_string_content() -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}]

    assert _params(messages)["messages"][1] == {"role": "assistant", "content": "Hello"}


def test_json_schema_response_format_maps_to_output_config() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

    params = _params(
        [{"role": "user", "content": "hi"}],
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
    )

    assert params["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"temperature": 0.5}, "temperature is not supported by anthropic"),
        ({"top_p": 0.5}, "top_p is not supported by anthropic"),
    ],
)
def test_sampling_parameters_are_rejected_naming_them(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(FerrymanError) as failure:
        _params([{"role": "user", "content": "hi"}], **fields)

    assert failure.value.code is ErrorCode.INVALID_REQUEST
    assert failure.value.message.startswith(message)


def test_sent_sampling_parameters_go_in_extra_body() -> None:
    request = _request([{"role": "user", "content": "hi"}], temperature=0.0)

    params = to_anthropic_params(request, "m", default_max_tokens=1, sampling="send")

    assert params["extra_body"] == {"temperature": 0.0}
    assert "temperature" not in params


# --- the event mapper --------------------------------------------------------------------


def test_a_tool_use_block_with_its_input_up_front_folds_to_that_input() -> None:
    events = _run(
        _start(),
        _block(0, {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}),
        _stop(0),
        _message_delta("tool_use"),
        {"type": "message_stop"},
    )

    completion = fold_events(events)
    assert [(c.id, c.name, c.arguments) for c in completion.tool_calls] == [("t1", "f", '{"a": 1}')]


def test_a_tool_call_missing_its_block_stop_is_still_closed_at_the_finish() -> None:
    events = _run(
        _start(),
        _block(0, {"type": "tool_use", "id": "t1", "name": "f", "input": {}}),
        _message_delta("tool_use"),
        {"type": "message_stop"},
    )

    assert events[:2] == [
        ToolCallFragment(index=0, id="t1", name="f"),
        ToolCallFragment(index=0, arguments="{}"),
    ]
    assert isinstance(events[-1], Finish)


def test_thinking_and_unknown_events_carry_no_answer() -> None:
    thinking_start = _block(0, {"type": "thinking", "thinking": "", "signature": ""})
    events = _run(
        _start(),
        thinking_start,
        _delta(0, {"type": "thinking_delta", "thinking": "hmm"}),
        _delta(0, {"type": "signature_delta", "signature": "sig"}),
        _stop(0),
        _block(1, {"type": "text", "text": ""}),
        _delta(1, {"type": "text_delta", "text": "Hi"}),
        _delta(1, {"type": "text_delta", "text": ""}),
        _stop(1),
        _message_delta("end_turn"),
        {"type": "message_stop"},
    )

    assert events[0] == TextDelta(text="Hi")
    assert len(events) == 3


def test_an_unknown_event_type_is_ignored() -> None:
    mapper = EventMapper()

    assert mapper.events(RawMessageStopEvent.model_construct(type="brand_new_event")) == []  # type: ignore[arg-type]


def test_usage_takes_the_latest_cumulative_counts_and_thinking_tokens() -> None:
    events = _run(
        _start({"input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 0}),
        _message_delta(
            "end_turn",
            {
                "input_tokens": 12,
                "output_tokens": 30,
                "cache_read_input_tokens": 5,
                "output_tokens_details": {"thinking_tokens": 20},
            },
        ),
        {"type": "message_stop"},
    )

    assert events == [
        UsageReport(input_tokens=17, output_tokens=30, cached_input_tokens=5, reasoning_tokens=20),
        Finish(reason="stop", model="claude-m"),
    ]


def test_message_stop_without_a_stop_reason_is_no_finish() -> None:
    assert _run(_start(), {"type": "message_stop"}) == []


def test_events_after_message_stop_are_ignored() -> None:
    events = _run(
        _start(),
        _message_delta("end_turn"),
        {"type": "message_stop"},
        _block(0, {"type": "text", "text": "late"}),
    )

    assert [type(e) for e in events] == [UsageReport, Finish]


def test_a_malformed_event_is_a_retryable_unavailable_error() -> None:
    mapper = EventMapper()
    broken = RawContentBlockDeltaEvent.model_construct(type="content_block_delta", index=0)

    with pytest.raises(FerrymanError) as failure:
        mapper.events(broken)

    assert failure.value.code is ErrorCode.UNAVAILABLE
    assert failure.value.retryable is True


def test_extended_thinking_is_enabled_with_its_budget_when_configured() -> None:
    from ferryman.contracts import ChatRequest, FerrymanError
    from llm_worker.providers.anthropic_mapping import to_anthropic_params

    request = ChatRequest.model_validate(
        {
            "model": "anthropic/c",
            "messages": [{"role": "user", "content": "think"}],
            "max_tokens": 4000,
        }
    )

    params = to_anthropic_params(request, "c", default_max_tokens=8000, thinking_budget=2048)

    assert params["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    with pytest.raises(FerrymanError):
        to_anthropic_params(request, "c", default_max_tokens=8000, thinking_budget=4000)


# Prompt-cache breakpoints: the exact wire form.

FIVE = {"type": "ephemeral"}
HOUR = {"type": "ephemeral", "ttl": "1h"}
TOOL = {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}


def test_unmarked_requests_keep_todays_wire_form() -> None:
    params = _params(
        [
            {"role": "system", "content": "one"},
            {"role": "system", "content": [{"type": "text", "text": "two"}]},
            {"role": "user", "content": "hi"},
        ],
        tools=[TOOL],
    )

    assert params["system"] == "one\n\ntwo"
    assert params["messages"] == [{"role": "user", "content": "hi"}]
    assert "cache_control" not in str(params)


def test_a_marked_system_becomes_blocks_with_the_marker_on_the_block_it_ends() -> None:
    params = _params(
        [
            {"role": "system", "content": "rules"},
            {
                "role": "system",
                "content": [
                    {"type": "text", "text": "docs", "cache_control": {"ttl": "1h"}},
                    {"type": "text", "text": ""},
                    {"type": "text", "text": "more"},
                ],
                "cache_control": {},
            },
            {"role": "system", "content": "tail"},
            {"role": "user", "content": "hi"},
        ]
    )

    assert params["system"] == [
        {"type": "text", "text": "rules"},
        {"type": "text", "text": "docs", "cache_control": HOUR},
        {"type": "text", "text": "more", "cache_control": FIVE},
        {"type": "text", "text": "tail"},
    ]


def test_the_tool_list_marker_goes_on_the_last_tool() -> None:
    second = {"type": "function", "function": {"name": "fetch"}}

    params = _params(
        [{"role": "user", "content": "hi"}], tools=[TOOL, second], prompt_cache={"tools": {}}
    )

    assert [t.get("cache_control") for t in params["tools"]] == [None, FIVE]


def test_message_markers_go_on_their_last_block_and_marked_parts_carry_their_own() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}
    params = _params(
        [
            {"role": "user", "content": "question", "cache_control": {"ttl": "1h"}},
            {"role": "assistant", "content": "let me look", "tool_calls": [call],
             "cache_control": {}},
            {"role": "tool", "tool_call_id": "c1", "content": "found", "cache_control": {}},
            {"role": "user", "content": [
                {"type": "text", "text": "a", "cache_control": {}},
                {"type": "text", "text": "b"},
            ]},
        ],
        tools=[TOOL],
    )  # fmt: skip

    assert params["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "question", "cache_control": HOUR}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "let me look"},
                {
                    "type": "tool_use",
                    "id": "c1",
                    "name": "search",
                    "input": {},
                    "cache_control": FIVE,
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "c1",
                    "content": "found",
                    "cache_control": FIVE,
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a", "cache_control": FIVE},
                {"type": "text", "text": "b"},
            ],
        },
    ]


def test_a_plain_assistant_turn_with_a_marker_becomes_one_marked_text_block() -> None:
    params = _params(
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello", "cache_control": {}},
            {"role": "user", "content": "more"},
        ]
    )

    assert params["messages"][1]["content"] == [
        {"type": "text", "text": "hello", "cache_control": FIVE}
    ]


@pytest.mark.parametrize(("retention", "wire"), [(None, FIVE), ("short", FIVE), ("long", HOUR)])
def test_the_retention_sets_the_ttl_of_markers_without_their_own(
    retention: str | None, wire: dict[str, str]
) -> None:
    params = _params(
        [{"role": "user", "content": "hi", "cache_control": {}}],
        prompt_cache={"retention": retention, "key": "k"},
    )

    assert params["messages"][0]["content"][0]["cache_control"] == wire
    assert "prompt_cache_key" not in params  # Anthropic has no key


def test_cache_reads_and_writes_are_mapped_with_the_long_part() -> None:
    usage = {
        "input_tokens": 10,
        "output_tokens": 1,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 50,
        "cache_creation": {"ephemeral_5m_input_tokens": 20, "ephemeral_1h_input_tokens": 30},
    }

    events = _run(_start(usage), _message_delta("end_turn"), {"type": "message_stop"})

    assert events[0] == UsageReport(
        input_tokens=160,
        output_tokens=7,
        cached_input_tokens=100,
        cache_write_tokens=50,
        cache_write_long_tokens=30,
    )
