"""Folding provider streams into completions, and reading upstream retry-after hints."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from ferryman.contracts import CompletedToolCall, ErrorCode, FerrymanError, Usage
from ferryman_runtime.upstreams.http_status import parse_retry_after
from llm_worker.chat.streaming import (
    CompletionBuilder,
    Finish,
    StreamEvent,
    TextDelta,
    ToolCallFragment,
    UsageReport,
    fold,
    fold_events,
)


def test_a_builder_without_a_finish_reports_an_unfinished_stream() -> None:
    with pytest.raises(FerrymanError) as failure:
        CompletionBuilder().result()

    assert failure.value.code is ErrorCode.UNAVAILABLE
    assert failure.value.retryable is True


def test_text_without_a_finish_is_never_a_complete_answer() -> None:
    with pytest.raises(FerrymanError) as failure:
        fold_events([TextDelta(text="partial"), UsageReport(input_tokens=1, output_tokens=1)])

    assert failure.value.code is ErrorCode.UNAVAILABLE


def test_fold_joins_text_and_orders_interleaved_tool_calls_by_index() -> None:
    events: list[StreamEvent] = [
        TextDelta(text="Let me "),
        ToolCallFragment(index=1, id="call_b", name="b"),
        ToolCallFragment(index=0, id="call_a", name="a", arguments='{"x"'),
        ToolCallFragment(index=1, arguments='{"y": 2}'),
        TextDelta(text="check."),
        ToolCallFragment(index=0, arguments=": 1}"),
        UsageReport(input_tokens=7, output_tokens=3),
        Finish(reason="tool_calls", model="served-model"),
    ]

    completion = fold_events(events)

    assert completion.content == "Let me check."
    assert completion.tool_calls == [
        CompletedToolCall(id="call_a", name="a", arguments='{"x": 1}'),
        CompletedToolCall(id="call_b", name="b", arguments='{"y": 2}'),
    ]
    assert completion.finish_reason == "tool_calls"
    assert completion.usage == Usage(input_tokens=7, output_tokens=3)
    assert completion.model == "served-model"


def test_usage_defaults_to_zero_when_the_provider_reports_none() -> None:
    completion = fold_events([TextDelta(text="hi"), Finish(reason="length")])

    assert completion.usage == Usage(input_tokens=0, output_tokens=0)
    assert completion.finish_reason == "length"
    assert completion.model is None


async def test_fold_propagates_a_provider_error_raised_midway() -> None:
    async def failing() -> AsyncIterator[StreamEvent]:
        yield TextDelta(text="a")
        await asyncio.sleep(0)
        raise FerrymanError(ErrorCode.RATE_LIMITED, "slow down")

    with pytest.raises(FerrymanError, match="slow down"):
        await fold(failing())


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),
        ({"retry-after": "-4"}, 0.0),
        ({"retry-after": "later, maybe"}, None),
        ({"retry-after-ms": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_is_read_in_seconds(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_retry_after_accepts_a_future_http_date() -> None:
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=120)

    seconds = parse_retry_after({"retry-after": email.utils.format_datetime(when, usegmt=True)})

    assert seconds is not None
    assert 110.0 < seconds <= 120.0


def test_retry_after_clamps_a_past_http_date_to_zero() -> None:
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


@pytest.mark.parametrize("raw", ["nan", "inf"])
def test_retry_after_ignores_non_finite_numbers(raw: str) -> None:
    assert parse_retry_after({"retry-after": raw}) is None
