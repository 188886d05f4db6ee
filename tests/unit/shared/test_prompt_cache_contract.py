"""The caching contract: breakpoints and their limits, the request's cache options, the cache
counts of `Usage` and `UsageEvent`, `completed.cached`, and the invalidation event."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from ferryman.contracts import (
    LLM_CACHE_INVALIDATE_REQUESTED,
    CacheControl,
    CacheInvalidation,
    ChatCompleted,
    ChatRequest,
    Usage,
)
from ferryman.contracts.asyncapi import build_asyncapi
from ferryman.contracts.usage import UsageEvent

MARK: dict[str, Any] = {"type": "ephemeral"}
LONG: dict[str, Any] = {"type": "ephemeral", "ttl": "1h"}
SHORT: dict[str, Any] = {"type": "ephemeral", "ttl": "5m"}


def _request(*messages: dict[str, Any], **fields: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "m", "messages": list(messages), **fields})


def _tool() -> dict[str, Any]:
    return {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


def test_every_message_role_and_text_part_takes_a_breakpoint_in_processing_order() -> None:
    request = _request(
        {"role": "user", "content": [
            {"type": "text", "text": "doc", "cache_control": SHORT},
            {"type": "text", "text": "question"},
        ]},
        {"role": "system", "content": "rules", "cache_control": LONG},
        {"role": "assistant", "content": "answer", "cache_control": MARK},
        tools=[_tool()],
        prompt_cache={"tools": LONG, "retention": "short"},
    )  # fmt: skip

    # tools, then the system message (though it comes second), then the others in order.
    assert [m.ttl for m in request.cache_breakpoints()] == ["1h", "1h", "5m", None]
    assert [m.effective_ttl("short") for m in request.cache_breakpoints()] == [
        "1h", "1h", "5m", "5m"
    ]  # fmt: skip
    assert CacheControl().effective_ttl("long") == "1h"
    assert CacheControl().effective_ttl(None) == "5m"


def test_a_tool_message_and_its_parts_take_breakpoints() -> None:
    request = _request(
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [
            {"id": "c1", "function": {"name": "lookup", "arguments": "{}"}}
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": [
            {"type": "text", "text": "result", "cache_control": MARK}
        ], "cache_control": MARK},
    )  # fmt: skip

    assert len(request.cache_breakpoints()) == 2


def test_a_request_without_markers_has_no_breakpoints_and_dumps_as_before() -> None:
    request = _request({"role": "user", "content": [{"type": "text", "text": "hi"}]})

    assert request.cache_breakpoints() == []
    dumped = request.model_dump(exclude_none=True)
    assert dumped["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert "prompt_cache" not in dumped
    assert "response_cache" not in dumped


def test_more_than_four_breakpoints_are_refused() -> None:
    four = [{"role": "user", "content": f"m{i}", "cache_control": MARK} for i in range(4)]
    assert len(_request(*four).cache_breakpoints()) == 4

    with pytest.raises(ValidationError, match=r"at most 4 cache_control breakpoints.*got 5"):
        _request(*four, prompt_cache={"tools": MARK}, tools=[_tool()])
    with pytest.raises(ValidationError, match="got 5"):
        _request(*four, {"role": "user", "content": [{"type": "text", "text": "x",
                                                       "cache_control": MARK}]})  # fmt: skip


@pytest.mark.parametrize(
    ("first", "second", "retention"),
    [
        (SHORT, LONG, None),
        (MARK, LONG, None),  # unset ttl without retention is 5m
        (MARK, LONG, "short"),
        (SHORT, MARK, "long"),  # unset ttl with long retention is 1h
    ],
)
def test_a_1h_breakpoint_after_a_5m_one_is_refused(
    first: dict[str, Any], second: dict[str, Any], retention: str | None
) -> None:
    with pytest.raises(ValidationError, match="1h cache_control breakpoint may not follow a 5m"):
        _request(
            {"role": "user", "content": "a", "cache_control": first},
            {"role": "user", "content": "b", "cache_control": second},
            prompt_cache={"retention": retention},
        )


def test_the_ttl_order_follows_processing_order_not_message_order() -> None:
    # The 1h system message comes after a 5m user message in the list but is processed
    # before it, and the 1h tools breakpoint comes first of all: allowed.
    _request(
        {"role": "user", "content": "a", "cache_control": SHORT},
        {"role": "system", "content": "s", "cache_control": LONG},
        tools=[_tool()],
        prompt_cache={"tools": LONG},
    )
    # A 5m tools breakpoint is processed before a 1h system one: refused.
    with pytest.raises(ValidationError, match="may not follow"):
        _request(
            {"role": "system", "content": "s", "cache_control": LONG},
            tools=[_tool()],
            prompt_cache={"tools": SHORT},
        )


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt_cache": {"key": ""}},
        {"prompt_cache": {"key": "k" * 257}},
        {"prompt_cache": {"retention": "forever"}},
        {"prompt_cache": {"unknown": 1}},
        {"response_cache": {"ttl": 0}},
        {"response_cache": {"namespace": "docs/v3"}},
        {"response_cache": {"namespace": ""}},
        {"messages": [{"role": "user", "content": "x", "cache_control": {"type": "persistent"}}]},
        {"messages": [{"role": "user", "content": "x", "cache_control": {"ttl": "24h"}}]},
    ],
)
def test_bad_cache_options_are_refused(bad: dict[str, Any]) -> None:
    fields = {"model": "m", "messages": [{"role": "user", "content": "x"}]} | bad

    with pytest.raises(ValidationError):
        ChatRequest.model_validate(fields)


def test_cache_options_round_trip_through_json() -> None:
    request = _request(
        {"role": "system", "content": [{"type": "text", "text": "s", "cache_control": LONG}]},
        {"role": "user", "content": "q"},
        tools=[_tool()],
        prompt_cache={"key": "docs", "retention": "long", "tools": LONG, "auto": False},
        response_cache={"use": True, "ttl": 60, "refresh": True, "namespace": "docs-v3"},
    )

    again = ChatRequest.model_validate_json(request.model_dump_json(by_alias=True))

    assert again == request
    assert again.prompt_cache is not None
    assert again.prompt_cache.tools == CacheControl(ttl="1h")
    assert again.response_cache is not None
    assert again.response_cache.namespace == "docs-v3"


def test_usage_carries_cache_reads_writes_and_long_writes() -> None:
    usage = Usage(
        input_tokens=1000, output_tokens=10, cached_input_tokens=600, cache_write_tokens=300,
        cache_write_long_tokens=100,
    )  # fmt: skip

    assert Usage.model_validate_json(usage.model_dump_json()) == usage
    assert Usage(input_tokens=1, output_tokens=1).cache_write_tokens is None
    with pytest.raises(ValidationError):
        Usage(input_tokens=1, output_tokens=1, cache_write_tokens=-1)


def test_a_cached_completed_event_carries_the_original_usage_and_time() -> None:
    stored_at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    completed = ChatCompleted(
        content="hi", tool_calls=[], finish_reason="stop",
        usage=Usage(input_tokens=0, output_tokens=0), provider="openai", model="gpt-4o",
        chunk_count=1, latency_ms={"total": 1.0},  # type: ignore[arg-type]
        cached=True, original_usage=Usage(input_tokens=50, output_tokens=5), cached_at=stored_at,
    )  # fmt: skip

    again = ChatCompleted.model_validate_json(completed.model_dump_json())

    assert again.cached is True
    assert again.original_usage == Usage(input_tokens=50, output_tokens=5)
    assert again.cached_at == stored_at
    with pytest.raises(ValidationError, match="timezone"):
        ChatCompleted.model_validate(
            completed.model_dump() | {"cached_at": datetime(2026, 11, 30, 12, 0)}
        )


def test_an_old_usage_event_payload_still_parses_with_zero_cache_counts() -> None:
    old = {
        "schema_version": 1, "request_id": "r", "service": "llm_worker", "tenant": "acme",
        "operation": "chat", "model": "openai/gpt-4o", "input_tokens": 10, "output_tokens": 2,
        "latency_seconds": 0.5, "outcome": "completed", "finished_at": "2026-11-30T12:00:00Z",
    }  # fmt: skip

    event = UsageEvent.model_validate(old)

    assert (event.cache_read_tokens, event.cache_write_tokens, event.cache_write_long_tokens) == (
        0, 0, 0
    )  # fmt: skip
    assert (event.cache_storage_token_hours, event.response_cache) == (0, None)


def test_a_usage_event_round_trips_its_cache_fields() -> None:
    event = UsageEvent(
        request_id="r", service="llm_worker", operation="prompt_cache_storage",
        model="gemini/gemini-2.5-flash", cache_read_tokens=1, cache_write_tokens=2,
        cache_write_long_tokens=1, cache_storage_token_hours=1.5, response_cache="stored",
        latency_seconds=0, outcome="completed", finished_at=datetime(2026, 11, 30, tzinfo=UTC),
    )  # fmt: skip

    assert UsageEvent.model_validate_json(event.model_dump_json()) == event
    with pytest.raises(ValidationError):
        UsageEvent.model_validate(event.model_dump() | {"response_cache": "miss"})


def test_an_invalidation_names_exactly_one_of_tenant_and_all() -> None:
    assert CacheInvalidation(tenant="acme", prefix="docs-v3/").scope == "tenant"
    assert CacheInvalidation(all=True, reason="price change").scope == "all"
    with pytest.raises(ValidationError, match="exactly one of tenant and all"):
        CacheInvalidation()
    with pytest.raises(ValidationError, match="exactly one of tenant and all"):
        CacheInvalidation(tenant="acme", all=True)
    with pytest.raises(ValidationError, match="prefix is relative to a tenant"):
        CacheInvalidation(all=True, prefix="docs/")
    with pytest.raises(ValidationError):
        CacheInvalidation(tenant="")
    with pytest.raises(ValidationError):
        CacheInvalidation.model_validate({"tenant": "acme", "scope": "x"})


def test_the_invalidation_event_is_on_the_control_channel_of_the_asyncapi_document() -> None:
    document = build_asyncapi()

    control = document["channels"]["mcpControl"]
    names = [
        document["components"]["messages"][ref["$ref"].rsplit("/", 1)[-1]]["title"]
        for ref in control["messages"].values()
    ]
    assert LLM_CACHE_INVALIDATE_REQUESTED in names
