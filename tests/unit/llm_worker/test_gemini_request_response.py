"""Pure Gemini mapping: thought signatures in ids, request translation details, response mapping."""

from __future__ import annotations

import base64
import os
from typing import Any

import aiohttp
import httpx2
import pytest
from google.genai import errors as genai_errors
from google.genai import types

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from llm_worker.chat.streaming import Finish, TextDelta, ToolCallFragment, UsageReport
from llm_worker.providers.gemini import from_api_error, map_errors
from llm_worker.providers.gemini_prefix import min_cache_tokens, split_prefix
from llm_worker.providers.gemini_request import (
    join_tool_call_id,
    split_tool_call_id,
    to_gemini_request,
    translate_request,
)
from llm_worker.providers.gemini_response import ResponseMapper


def _request(messages: list[dict[str, Any]], **fields: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "gemini/x", "messages": messages, **fields})


def _contents(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    contents, _ = to_gemini_request(_request(messages))
    return [c.model_dump(exclude_none=True) for c in contents]


def _call(call_id: str, name: str = "f", arguments: str = "{}") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# --- thought signatures in ids --------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 2, 3, 4, 31, 32, 33, 255, 1024])
def test_a_signature_round_trips_through_the_id_byte_for_byte(length: int) -> None:
    signature = os.urandom(length)

    joined = join_tool_call_id("call_abc", signature)

    assert joined.startswith("call_abc~ts~")
    assert not set(joined) & set("=+/"), "URL-safe base64 without padding"
    assert split_tool_call_id(joined) == ("call_abc", signature)


def test_ids_without_a_signature_are_left_alone() -> None:
    assert join_tool_call_id("call_1", None) == "call_1"
    assert join_tool_call_id("call_1", b"") == "call_1"
    assert split_tool_call_id("call_1") == ("call_1", None)
    assert split_tool_call_id("toolu_01~x") == ("toolu_01~x", None)


def test_only_the_last_separator_splits_an_id() -> None:
    joined = join_tool_call_id("odd~ts~id", b"\x01\x02")

    assert split_tool_call_id(joined) == ("odd~ts~id", b"\x01\x02")


@pytest.mark.parametrize("suffix", ["", "a", "not base64!", "abcde"])
def test_a_corrupt_signature_suffix_is_an_invalid_request(suffix: str) -> None:
    with pytest.raises(FerrymanError) as failure:
        split_tool_call_id(f"call_1~ts~{suffix}")

    assert failure.value.code is ErrorCode.INVALID_REQUEST


# --- request details ------------------------------------------------------------------------


def test_consecutive_tool_results_share_one_user_turn_and_find_their_call_by_plain_id() -> None:
    signed = join_tool_call_id("c1", b"sig")
    contents = _contents(
        [
            {"role": "user", "content": "go"},
            {"role": "assistant", "tool_calls": [_call(signed, "a"), _call("c2", "b")]},
            {"role": "tool", "content": "[1, 2]", "tool_call_id": "c1"},
            {
                "role": "tool",
                "content": [{"type": "text", "text": '{"ok": '}, {"type": "text", "text": "true}"}],
                "tool_call_id": "c2",
            },
            {"role": "assistant", "content": "again", "tool_calls": [_call("c1", "z")]},
            {"role": "tool", "content": "  {broken", "tool_call_id": signed},
        ]
    )

    assert [c["role"] for c in contents] == ["user", "model", "user", "model", "user"]
    first, second = contents[2]["parts"], contents[4]["parts"]
    assert [p["function_response"] for p in first] == [
        {"id": "c1", "name": "a", "response": {"result": "[1, 2]"}},
        {"id": "c2", "name": "b", "response": {"ok": True}},
    ]
    # A reused id answers the latest call that made it.
    assert second == [
        {"function_response": {"id": "c1", "name": "z", "response": {"result": "  {broken"}}}
    ]


def test_assistant_text_without_tool_calls_and_empty_text_are_handled() -> None:
    contents = _contents(
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": ""},
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ]
    )

    assert contents == [
        {"role": "user", "parts": [{"text": "hi"}]},
        {"role": "model", "parts": [{"text": "a"}, {"text": "b"}]},
    ]


@pytest.mark.parametrize(
    ("url", "mime_type", "data"),
    [
        ("data:image/png;base64,AAEC", "image/png", b"\x00\x01\x02"),
        ("data:IMAGE/GIF;name=x.gif;base64,R0lG", "image/gif", b"GIF"),
        ("data:image/svg+xml,%3Csvg%2F%3E", "image/svg+xml", b"<svg/>"),
    ],
)
def test_data_urls_become_inline_data(url: str, mime_type: str, data: bytes) -> None:
    [content] = _contents(
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    )

    assert content["parts"] == [{"inline_data": {"mime_type": mime_type, "data": data}}]


@pytest.mark.parametrize(
    ("url", "mime_type"),
    [
        ("https://x.test/a.PNG", "image/png"),
        ("https://x.test/a.jpg?size=2#frag", "image/jpeg"),
        ("http://x.test/a.webp", "image/webp"),
        ("https://x.test/doc.pdf", "application/pdf"),
        ("https://x.test/files/abc123", "image/jpeg"),
    ],
)
def test_http_urls_become_file_data_with_a_guessed_mime_type(url: str, mime_type: str) -> None:
    [content] = _contents(
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    )

    assert content["parts"] == [{"file_data": {"file_uri": url, "mime_type": mime_type}}]


@pytest.mark.parametrize(
    "url",
    ["data:;base64,AAAA", "data:image/png;base64", "data:image/png;base64,!!!!", "file:///x.png"],
)
def test_malformed_image_urls_are_invalid_requests(url: str) -> None:
    with pytest.raises(FerrymanError) as failure:
        _contents([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])

    assert failure.value.code is ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize("arguments", ["[1]", "null", '"x"'])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    with pytest.raises(FerrymanError) as failure:
        _contents(
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [_call("c", arguments=arguments)]},
            ]
        )

    assert failure.value.code is ErrorCode.INVALID_REQUEST


def test_sdk_side_features_are_switched_off_and_stop_accepts_a_string() -> None:
    _, config = to_gemini_request(_request([{"role": "user", "content": "x"}], stop="END"))

    assert config.stop_sequences == ["END"]
    assert config.automatic_continuation is False
    assert config.automatic_function_calling == types.AutomaticFunctionCallingConfig(disable=True)
    assert config.tool_config is None
    assert config.safety_settings is None


def test_tool_choice_none_without_tools_sends_no_tool_config() -> None:
    _, config = to_gemini_request(_request([{"role": "user", "content": "x"}], tool_choice="none"))

    assert config.tools is None
    assert config.tool_config is None


def test_safety_names_are_case_insensitive_and_the_request_overrides_the_default() -> None:
    request = _request(
        [{"role": "user", "content": "x"}],
        metadata={"gemini_safety": '{"harm_category_harassment": "block_none"}'},
    )

    _, config = to_gemini_request(
        request, safety_settings={"HARM_CATEGORY_HARASSMENT": "BLOCK_ONLY_HIGH"}
    )

    assert config.safety_settings == [
        types.SafetySetting(
            category=types.HarmCategory.HARM_CATEGORY_HARASSMENT,
            threshold=types.HarmBlockThreshold.BLOCK_NONE,
        )
    ]


# --- response mapping -----------------------------------------------------------------------


def _response(payload: dict[str, Any]) -> types.GenerateContentResponse:
    return types.GenerateContentResponse.model_validate(payload)


def test_other_candidates_and_empty_parts_are_ignored() -> None:
    mapper = ResponseMapper(id_prefix="p")
    events = mapper.events(
        _response(
            {
                "candidates": [
                    {"index": 1, "content": {"parts": [{"text": "other"}]}},
                    {
                        "content": {"parts": [{"text": ""}, {"text": "mine"}]},
                        "finish_reason": "STOP",
                    },
                ]
            }
        )
    )

    assert events == [TextDelta(text="mine")]
    assert mapper.final_events() == [Finish(reason="stop", model=None)]


def test_generated_ids_use_the_prefix_and_count_across_responses() -> None:
    mapper = ResponseMapper(id_prefix="p")
    call = {"function_call": {"name": "f", "args": {"k": [1, "é"]}}}

    first = mapper.events(_response({"candidates": [{"content": {"parts": [call]}}]}))
    second = mapper.events(
        _response({"candidates": [{"content": {"parts": [call]}, "finish_reason": "STOP"}]})
    )

    assert first + second == [
        ToolCallFragment(index=0, id="call_p0", name="f", arguments='{"k": [1, "é"]}'),
        ToolCallFragment(index=1, id="call_p1", name="f", arguments='{"k": [1, "é"]}'),
    ]
    assert mapper.final_events() == [Finish(reason="tool_calls", model=None)]


def test_usage_without_optional_counts_reports_none_for_them() -> None:
    mapper = ResponseMapper()
    mapper.events(
        _response(
            {
                "usage_metadata": {"prompt_token_count": 7, "candidates_token_count": 2},
                "candidates": [{"content": {"parts": [{"text": "x"}]}, "finish_reason": "STOP"}],
            }
        )
    )

    assert mapper.final_events()[0] == UsageReport(
        input_tokens=7, output_tokens=2, cached_input_tokens=None, reasoning_tokens=None
    )


def test_a_pause_without_a_token_is_an_unfinished_answer() -> None:
    mapper = ResponseMapper()
    mapper.events(
        _response(
            {
                "candidates": [
                    {"content": {"parts": [{"text": "x"}]}, "finish_reason": "CONTINUATION"}
                ]
            }
        )
    )

    assert mapper.next_hop() is None
    with pytest.raises(FerrymanError) as failure:
        mapper.final_events()
    assert failure.value.code is ErrorCode.UNAVAILABLE
    assert failure.value.retryable is True


# --- error mapping --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (TimeoutError(), ErrorCode.TIMEOUT),
        (httpx2.ReadTimeout("slow"), ErrorCode.TIMEOUT),
        (aiohttp.ServerTimeoutError(), ErrorCode.TIMEOUT),
        (aiohttp.ClientPayloadError("cut"), ErrorCode.UNAVAILABLE),
        (aiohttp.ServerDisconnectedError(), ErrorCode.UNAVAILABLE),
        (httpx2.ConnectError("refused"), ErrorCode.UNAVAILABLE),
        (genai_errors.UnknownApiResponseError("bad json"), ErrorCode.UNAVAILABLE),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_transport_errors_of_either_http_stack_are_mapped(
    raised: Exception, code: ErrorCode
) -> None:
    with pytest.raises(FerrymanError) as failure, map_errors():
        raise raised

    assert failure.value.code is code
    assert failure.value.retryable is True
    assert failure.value.upstream == "gemini"


def test_an_error_without_a_status_is_a_retryable_unavailable() -> None:
    error = from_api_error(genai_errors.APIError(0, {"error": {"message": "odd"}}))

    assert error.code is ErrorCode.UNAVAILABLE
    assert error.retryable is True


def test_retry_info_durations_with_fractions_are_read() -> None:
    body = {
        "error": {
            "code": 429,
            "message": "quota",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"},
            ],
        }
    }

    error = from_api_error(genai_errors.ClientError(429, body))

    assert error.code is ErrorCode.RATE_LIMITED
    assert error.retry_after == 1.5


def test_the_base64_alphabet_of_sent_signatures_is_url_safe() -> None:
    # Documented, not relied upon: the SDK serialises bytes as URL-safe base64.
    part = types.Part(thought_signature=b"\xfb\xff")

    assert part.model_dump(mode="json", exclude_none=True) == {
        "thought_signature": base64.urlsafe_b64encode(b"\xfb\xff").decode()
    }


# --- the cached prefix (explicit context caching) -------------------------------------------

MARK = {"type": "ephemeral"}
LONG_SYSTEM = "Follow the house rules. " * 50


def _split(messages: list[dict[str, Any]], tenant: str | None = "acme", **fields: Any) -> Any:
    request = _request(messages, **fields)
    return split_prefix(
        request, translate_request(request), model="gemini-2.5-flash", tenant=tenant
    )


def test_a_request_without_breakpoints_has_no_cached_prefix() -> None:
    assert (
        _split([{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "q"}])
        is None
    )


def test_a_marked_system_message_caches_system_only_and_keeps_every_turn() -> None:
    split = _split(
        [
            {"role": "system", "content": LONG_SYSTEM, "cache_control": MARK},
            {"role": "user", "content": "q"},
        ]
    )

    assert split.prefix.contents == []
    assert split.prefix.system_instruction.parts[0].text == LONG_SYSTEM
    assert split.prefix.retention == "5m"
    assert [c.parts[0].text for c in split.rest] == ["q"]
    assert split.config.system_instruction is None
    assert split.config.tools is None
    assert split.config.tool_config is None
    config = split.cached_config("cachedContents/x", types.HttpOptions(api_version="v1beta"))
    assert config.cached_content == "cachedContents/x"
    assert config.http_options.api_version == "v1beta"


def test_a_marked_tool_result_caches_its_whole_turn_of_results() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [_call("a"), _call("b")]},
        {"role": "tool", "content": "1", "tool_call_id": "a", "cache_control": MARK},
        {"role": "tool", "content": "2", "tool_call_id": "b"},
        {"role": "user", "content": "next"},
    ]

    split = _split(messages)

    assert [c.role for c in split.prefix.contents] == ["user", "model", "user"]
    assert len(split.prefix.contents[2].parts) == 2  # both results share one turn
    assert [c.parts[0].text for c in split.rest] == ["next"]


def test_a_breakpoint_on_the_last_message_leaves_it_to_the_call() -> None:
    messages = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three", "cache_control": {"ttl": "1h"}},
    ]

    split = _split(messages)

    assert [c.parts[0].text for c in split.prefix.contents] == ["one", "two"]
    assert [c.parts[0].text for c in split.rest] == ["three"]
    assert split.prefix.retention == "1h"


def test_marked_tools_alone_are_a_prefix_and_long_retention_maps_to_1h() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    split = _split(
        [{"role": "user", "content": "q"}],
        tools=[tool],
        prompt_cache={"tools": MARK, "retention": "long"},
    )

    assert split.prefix.contents == []
    assert split.prefix.system_instruction is None
    assert split.prefix.tools[0].function_declarations[0].name == "f"
    assert split.prefix.retention == "1h"


def test_the_digest_depends_on_the_prefix_tenant_key_and_model_only() -> None:
    def digest(user: str = "q", tenant: str | None = "acme", **fields: Any) -> str:
        messages = [
            {"role": "system", "content": LONG_SYSTEM, "cache_control": MARK},
            {"role": "user", "content": user},
        ]
        return _split(messages, tenant=tenant, **fields).prefix.digest

    assert digest() == digest(user="something else entirely")
    assert digest() == digest(temperature=0.3)
    assert digest() != digest(tenant="globex")
    assert digest() != digest(tenant=None)
    assert len({digest(tenant=None), digest(tenant=""), digest(tenant="-")}) == 3
    assert digest() != digest(prompt_cache={"key": "fm-other"})
    request = _request(
        [{"role": "system", "content": LONG_SYSTEM, "cache_control": MARK},
         {"role": "user", "content": "q"}]
    )  # fmt: skip
    other_model = split_prefix(
        request, translate_request(request), model="gemini-2.5-pro", tenant="acme"
    )
    assert other_model is not None
    assert other_model.prefix.digest != digest()


def test_the_minimum_prefix_takes_the_longest_matching_pattern_overrides_first() -> None:
    assert min_cache_tokens("gemini-2.5-flash") == 1024
    assert min_cache_tokens("models/gemini-2.5-flash-lite-001") == 2048
    assert min_cache_tokens("gemini-2.5-pro") == 2048
    assert min_cache_tokens("gemini-3-pro-preview") == 4096
    assert min_cache_tokens("something-new") == 4096
    assert min_cache_tokens("gemini-2.5-flash", {"gemini-*": 10}) == 10


def test_the_write_of_a_created_cached_content_is_reported_and_counted_as_input() -> None:
    mapper = ResponseMapper(cache_write_tokens=500)
    mapper.events(
        types.GenerateContentResponse.model_validate(
            {
                "candidates": [
                    {"content": {"parts": [{"text": "ok"}]}, "finishReason": "STOP", "index": 0}
                ],
                "usageMetadata": {
                    "promptTokenCount": 520,
                    "cachedContentTokenCount": 500,
                    "candidatesTokenCount": 1,
                },
            }
        )
    )

    [usage, _] = mapper.final_events()

    assert usage == UsageReport(
        input_tokens=1020, output_tokens=1, cached_input_tokens=500, cache_write_tokens=500
    )
