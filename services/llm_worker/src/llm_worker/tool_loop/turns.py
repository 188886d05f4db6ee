"""What a tool loop's turns become: the next turn's messages, the step summaries of the
`completed` event, the usage summed over turns, and a `completed` event that fits a record."""

from __future__ import annotations

from ferryman.contracts import ChatCompleted, ErrorCode
from ferryman.contracts.errors import ErrorInfo
from ferryman.contracts.llm import (
    AssistantMessage,
    CompletedToolCall,
    FunctionCall,
    Message,
    StepToolResult,
    ToolCall,
    ToolMessage,
    Usage,
)
from ferryman.contracts.llm_tools import ToolCallFinished

MAX_COMPLETED_BYTES = 512 * 1024
"""Above this, the `completed` event drops the earlier turns' text and arguments."""


def within_record_size(completed: ChatCompleted) -> ChatCompleted:
    """`completed`, or, past `MAX_COMPLETED_BYTES`, without the earlier steps' text and
    arguments: past a Kafka record's size the terminal event could never be published."""
    if len(completed.model_dump_json(exclude_none=True)) <= MAX_COMPLETED_BYTES:
        return completed
    steps = completed.steps or []
    trimmed = [
        step.model_copy(
            update={
                "content": "",
                "tool_calls": [c.model_copy(update={"arguments": ""}) for c in step.tool_calls],
            }
        )
        for step in steps[:-1]
    ]
    return completed.model_copy(update={"steps": [*trimmed, *steps[-1:]]})


def turn_messages(
    content: str, calls: list[CompletedToolCall], results: list[ToolCallFinished]
) -> list[Message]:
    """The assistant turn and one tool message per call, for the next turn."""
    turn = AssistantMessage(
        role="assistant",
        content=content or None,
        tool_calls=[
            ToolCall(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments))
            for call in calls
        ],
    )
    answered = {result.call_id: result for result in results}
    replies: list[Message] = [turn]
    for call in calls:
        result = answered.get(call.id)
        text = result.content if result is not None else "Error: the call was not run"
        replies.append(
            ToolMessage(role="tool", content=text or "(no output)", tool_call_id=call.id)
        )
    return replies


def unknown_function(step: int, call: CompletedToolCall) -> ToolCallFinished:
    """The result the model gets for a call of a function that was never offered (a
    hallucinated name): an error it can recover from, not the end of the loop."""
    error = ErrorInfo(
        code=ErrorCode.NOT_FOUND,
        message=f"no function named {call.name[:128]!r} is offered",
        retryable=False,
    )
    return ToolCallFinished(
        step=step,
        call_id=call.id,
        server="",
        tool=call.name[:128],
        tool_request_id="",
        content=f"Error ({error.code}): {error.message}",
        is_error=True,
        error=error,
        duration_ms=0.0,
    )


def step_summaries(results: list[ToolCallFinished], with_content: bool) -> list[StepToolResult]:
    """How each call of a step ended, for `completed`; `with_content` for the last step when
    it goes back to the producer, who continues the conversation from there."""
    return [
        StepToolResult(
            call_id=result.call_id,
            server=result.server,
            tool=result.tool,
            is_error=result.is_error,
            error_code=result.error.code if result.error is not None else None,
            duration_ms=result.duration_ms,
            cached=result.cached,
            replayed=result.replayed,
            content=result.content if with_content else None,
        )
        for result in results
    ]


def summed_usage(usages: list[Usage]) -> Usage:
    """The usage of every turn added up (an optional count stays None if no turn had it)."""

    def total(values: list[int | None]) -> int | None:
        known = [value for value in values if value is not None]
        return sum(known) if known else None

    return Usage(
        input_tokens=sum(u.input_tokens for u in usages),
        output_tokens=sum(u.output_tokens for u in usages),
        cached_input_tokens=total([u.cached_input_tokens for u in usages]),
        reasoning_tokens=total([u.reasoning_tokens for u in usages]),
        cache_write_tokens=total([u.cache_write_tokens for u in usages]),
        cache_write_long_tokens=total([u.cache_write_long_tokens for u in usages]),
    )
