"""The public event contract: request validation, result shapes and the error taxonomy."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from ferryman.contracts import (
    ChatChunk,
    ChatCompleted,
    ChatRequest,
    ChatRestarted,
    ChunkDelta,
    CompletedToolCall,
    ErrorCode,
    ErrorInfo,
    FerrymanError,
    Latency,
    ToolCallDelta,
    Usage,
)
from ferryman.contracts.errors import RETRYABLE_CODES

FULL_REQUEST: dict[str, Any] = {
    "model": "openai/gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        },
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "cat"}'},
                }
            ],
        },
        {"role": "tool", "content": "a cat", "tool_call_id": "call_1"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look something up.",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "lookup"}},
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
    },
    "stop": ["\n\n", "END"],
    "temperature": 0.3,
    "stream": True,
    "metadata": {"tenant": "acme"},
}


def _with(**changes: Any) -> dict[str, Any]:
    payload = copy.deepcopy(FULL_REQUEST)
    payload.update(changes)
    return payload


def test_a_full_request_round_trips_unchanged() -> None:
    request = ChatRequest.model_validate(FULL_REQUEST)

    dumped = request.model_dump(mode="json", exclude_none=True, by_alias=True)

    assert dumped == FULL_REQUEST
    assert request.response_format is not None
    assert request.response_format.json_schema.json_schema == {"type": "object"}  # type: ignore[union-attr]


def test_an_unknown_top_level_field_is_rejected() -> None:
    with pytest.raises(ValidationError, match="temprature"):
        ChatRequest.model_validate(_with(temprature=1))


def test_an_unknown_nested_field_is_rejected() -> None:
    payload = _with()
    payload["messages"][0]["colour"] = "blue"

    with pytest.raises(ValidationError, match="colour"):
        ChatRequest.model_validate(payload)


def test_an_assistant_message_without_content_or_tool_calls_is_rejected() -> None:
    payload = _with(messages=[{"role": "user", "content": "hi"}, {"role": "assistant"}])

    with pytest.raises(ValidationError, match="needs content or tool_calls"):
        ChatRequest.model_validate(payload)


def test_an_assistant_message_with_an_empty_tool_call_list_and_no_content_is_rejected() -> None:
    payload = _with(
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": []}]
    )

    with pytest.raises(ValidationError, match="needs content or tool_calls"):
        ChatRequest.model_validate(payload)


def test_tool_choice_required_without_tools_is_rejected() -> None:
    payload = _with(tool_choice="required")
    del payload["tools"]

    with pytest.raises(ValidationError, match="tool_choice requires tools"):
        ChatRequest.model_validate(payload)


def test_a_named_tool_choice_for_an_unoffered_tool_is_rejected() -> None:
    payload = _with(tool_choice={"type": "function", "function": {"name": "other"}})

    with pytest.raises(ValidationError, match="unknown tool 'other'"):
        ChatRequest.model_validate(payload)


@pytest.mark.parametrize("stop", [[], ["a", "b", "c", "d", "e"]])
def test_a_stop_list_outside_one_to_four_sequences_is_rejected(stop: list[str]) -> None:
    with pytest.raises(ValidationError, match="stop takes 1 to 4"):
        ChatRequest.model_validate(_with(stop=stop))


def test_stream_defaults_to_true() -> None:
    request = ChatRequest.model_validate(
        {"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]}
    )

    assert request.stream is True


def test_a_request_without_messages_is_rejected() -> None:
    with pytest.raises(ValidationError, match="messages"):
        ChatRequest.model_validate({"model": "mock/echo", "messages": []})


LONE = "\ud800"
"""Half a UTF-16 surrogate pair: JSON can escape it (`"\\ud800"`), UTF-8 cannot carry it."""


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda r: r["messages"].append({"role": "user", "content": f"hi {LONE}"}), "messages[4]"),
        (lambda r: r["messages"][1]["content"][0].update(text=LONE), "messages[1].content[0].text"),
        (lambda r: r.update(model=f"openai/{LONE}"), "model"),
        (lambda r: r.update(metadata={"user_id": LONE}), "metadata.user_id"),
        (lambda r: r.update(metadata={LONE: "x"}), "metadata."),
        (
            lambda r: r["tools"][0]["function"]["parameters"].update(title=f"x{LONE}y"),
            "tools[0].function.parameters.title",
        ),
    ],
    ids=["message", "text-part", "model", "metadata-value", "metadata-key", "tool-schema"],
)
def test_a_lone_surrogate_anywhere_in_the_request_is_rejected_and_located(
    change: Any, where: str
) -> None:
    request = copy.deepcopy(FULL_REQUEST)
    change(request)

    with pytest.raises(ValidationError, match="lone UTF-16 surrogate") as failure:
        ChatRequest.model_validate(request)

    assert where in str(failure.value)
    # The message can itself be published: it never carries the surrogate.
    failure.value.errors()[0]["msg"].encode("utf-8")


def test_a_surrogate_pair_decoded_from_json_is_an_ordinary_character() -> None:
    raw = json.dumps({"model": "mock/echo", "messages": [{"role": "user", "content": "🙂"}]})
    assert "\\ud83d\\ude42" in raw  # escaped as a pair by json.dumps

    request = ChatRequest.model_validate(json.loads(raw))

    assert request.messages[0].model_dump()["content"] == "🙂"


def test_a_text_chunk_serializes_as_index_content_delta_and_attempt_only() -> None:
    chunk = ChatChunk(index=3, delta=ChunkDelta(content="Hel"))

    assert json.loads(chunk.model_dump_json(exclude_none=True)) == {
        "index": 3,
        "delta": {"content": "Hel"},
        "attempt": 1,
    }


def test_a_chunk_without_an_attempt_belongs_to_the_first_attempt() -> None:
    chunk = ChatChunk.model_validate_json('{"index": 0, "delta": {"content": "Hi"}}')

    assert chunk.attempt == 1


def test_a_restart_must_announce_a_second_or_later_attempt() -> None:
    reason = ErrorInfo(code=ErrorCode.UNAVAILABLE, message="stream cut", retryable=True)

    with pytest.raises(ValidationError, match="attempt"):
        ChatRestarted(attempt=1, discarded_chunks=2, reason=reason, deployment="b")


def test_a_tool_call_chunk_serializes_without_absent_fields() -> None:
    chunk = ChatChunk(
        index=0, delta=ChunkDelta(tool_calls=[ToolCallDelta(index=1, arguments='{"a"')])
    )

    assert json.loads(chunk.model_dump_json(exclude_none=True)) == {
        "index": 0,
        "delta": {"tool_calls": [{"index": 1, "arguments": '{"a"'}]},
        "attempt": 1,
    }


def test_a_completed_event_serializes_every_contract_field() -> None:
    completed = ChatCompleted(
        content="Hello",
        tool_calls=[CompletedToolCall(id="c1", name="f", arguments="{}")],
        finish_reason="tool_calls",
        usage=Usage(input_tokens=4, output_tokens=2),
        provider="mock",
        model="echo",
        chunk_count=2,
        latency_ms=Latency(first_token=None, total=12.5),
    )

    assert json.loads(completed.model_dump_json(exclude_none=True)) == {
        "content": "Hello",
        "tool_calls": [{"id": "c1", "name": "f", "arguments": "{}"}],
        "finish_reason": "tool_calls",
        "usage": {"input_tokens": 4, "output_tokens": 2},
        "provider": "mock",
        "model": "echo",
        "chunk_count": 2,
        "latency_ms": {"total": 12.5},
    }


DEFAULT_RETRYABILITY = {
    ErrorCode.INVALID_REQUEST: False,
    ErrorCode.AUTH: False,
    ErrorCode.PERMISSION_DENIED: False,
    ErrorCode.NOT_FOUND: False,
    ErrorCode.CONFLICT: False,
    ErrorCode.PRECONDITION_FAILED: False,
    ErrorCode.TOO_LARGE: False,
    ErrorCode.RATE_LIMITED: True,
    ErrorCode.UNAVAILABLE: True,
    ErrorCode.TIMEOUT: True,
    ErrorCode.CONTENT_FILTER: False,
    ErrorCode.CONTEXT_LENGTH: False,
    ErrorCode.EXPIRED: False,
    ErrorCode.CANCELLED: False,
    ErrorCode.TOOL_ERROR: False,
    ErrorCode.INTERNAL: False,
}


@pytest.mark.parametrize(("code", "retryable"), list(DEFAULT_RETRYABILITY.items()))
def test_each_error_code_has_its_default_retryability(code: ErrorCode, retryable: bool) -> None:
    assert FerrymanError(code, "x").retryable is retryable
    assert (code in RETRYABLE_CODES) is retryable


def test_every_error_code_has_a_stated_default_retryability() -> None:
    # A new code must take a side here, deliberately.
    assert set(DEFAULT_RETRYABILITY) == set(ErrorCode)


def test_the_new_codes_travel_under_their_wire_names() -> None:
    wire = {
        ErrorCode.NOT_FOUND: "not_found",
        ErrorCode.CONFLICT: "conflict",
        ErrorCode.PRECONDITION_FAILED: "precondition_failed",
        ErrorCode.PERMISSION_DENIED: "permission_denied",
        ErrorCode.TOO_LARGE: "too_large",
    }
    for code, name in wire.items():
        info = FerrymanError(code, "m", upstream="s3").to_info()
        assert json.loads(info.model_dump_json()) == {
            "code": name,
            "message": "m",
            "retryable": False,
            "upstream": "s3",
            "status": None,
        }
        assert ErrorInfo.model_validate_json(info.model_dump_json()) == info


def test_an_explicit_retryable_overrides_the_code_default() -> None:
    assert FerrymanError(ErrorCode.UNAVAILABLE, "x", retryable=False).retryable is False
    assert FerrymanError(ErrorCode.AUTH, "x", retryable=True).retryable is True


def test_to_info_carries_code_message_retryability_upstream_and_status() -> None:
    error = FerrymanError(
        ErrorCode.RATE_LIMITED, "slow down", upstream="openai", status=429, retry_after=2.0
    )

    assert error.to_info() == ErrorInfo(
        code=ErrorCode.RATE_LIMITED,
        message="slow down",
        retryable=True,
        upstream="openai",
        status=429,
    )


@pytest.mark.parametrize("status", [0, 99, 600, 1000])
def test_to_info_drops_a_status_outside_the_http_range(status: int) -> None:
    assert FerrymanError(ErrorCode.INTERNAL, "x", status=status).to_info().status is None


def test_importing_the_contracts_pulls_in_no_sdk() -> None:
    banned = ["aiokafka", "cloudevents", "faststream", "openai", "httpx2", "prometheus_client"]
    script = (
        "import sys, json, ferryman.contracts; "
        f"print(json.dumps([m for m in {banned!r} if m in sys.modules]))"
    )

    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )

    assert json.loads(result.stdout) == []


def test_an_error_code_from_a_newer_worker_is_kept_as_text_with_its_retryability() -> None:
    info = ErrorInfo.model_validate(
        {"code": "quota_exhausted_v9", "message": "later taxonomy", "retryable": True}
    )
    known = ErrorInfo.model_validate({"code": "not_found", "message": "m", "retryable": False})

    assert (info.code, info.retryable) == ("quota_exhausted_v9", True)
    assert known.code is ErrorCode.NOT_FOUND
