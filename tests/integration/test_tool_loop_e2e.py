"""The tool loop end to end, for every provider: the client, the real Kafka, the LLM worker
(its provider's fake server scripted to call tools), the mcp_worker and the toolbox MCP server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ferryman.cli import main as ferryman
from ferryman.client import ChatFailedError
from ferryman.contracts import (
    ChatChunk,
    ChatCompleted,
    ChatProgress,
    ToolCallFinished,
    ToolCallStarted,
)
from tests.integration.tool_loop_harness import (
    MODEL,
    PROVIDERS,
    ToolLoopStack,
    of_type,
    tool_loop_stack,
    tool_request,
    toolbox_call,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def stack(kafka_bootstrap: str, unique: str, tmp_path: Path) -> AsyncIterator[ToolLoopStack]:
    async with tool_loop_stack(kafka_bootstrap, unique, tmp_path) as running:
        yield running


def _model(provider: str) -> str:
    return f"{provider}/{MODEL}"


async def _events(stack: ToolLoopStack, request: dict[str, Any], **options: Any) -> list[Any]:
    return [event async for event in stack.client.chat_stream(request, timeout=90, **options)]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_one_tool_call_runs_and_its_result_reaches_the_model(
    stack: ToolLoopStack, provider: str
) -> None:
    stack.fakes.script(
        provider, MODEL, tool_steps=[[toolbox_call("echo", text="hi from the toolbox")]],
        echo_tool_results=True,
    )  # fmt: skip

    events = await _events(stack, tool_request(_model(provider)))

    started = of_type(events, ToolCallStarted)
    finished = of_type(events, ToolCallFinished)
    completed = events[-1]
    assert isinstance(completed, ChatCompleted)
    assert [(s.server, s.tool, json.loads(s.arguments)) for s in started] == [
        ("toolbox", "echo", {"text": "hi from the toolbox"})
    ]
    assert [(f.content, f.is_error) for f in finished] == [("hi from the toolbox", False)]
    assert completed.content == "tool results: hi from the toolbox"
    assert completed.finish_reason == "stop"
    steps = completed.steps or []
    assert [len(step.tool_calls) for step in steps] == [1, 0]
    assert completed.usage.input_tokens == sum(s.usage.input_tokens for s in steps)
    assert completed.usage.output_tokens == sum(s.usage.output_tokens for s in steps)
    assert steps[0].usage != steps[1].usage
    final_chunks = [c for c in of_type(events, ChatChunk) if c.step == 1]
    assert "".join(c.delta.content or "" for c in final_chunks) == completed.content
    stages = [p.stage for p in of_type(events, ChatProgress)]
    assert stages == ["step_started", "waiting_tools", "step_started"]
    # In order: the call is announced before its result, and both before the next turn.
    kinds = [type(e).__name__ for e in events if not isinstance(e, ChatChunk)]
    assert kinds.index("ToolCallStarted") < kinds.index("ToolCallFinished")
    assert kinds.index("ToolCallFinished") < len(kinds) - 2


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_parallel_calls_then_a_second_round(stack: ToolLoopStack, provider: str) -> None:
    stack.fakes.script(
        provider,
        MODEL,
        tool_steps=[
            [toolbox_call("add", a=2, b=3), toolbox_call("echo", text="second")],
            [toolbox_call("echo", text="round two")],
        ],
        echo_tool_results=True,
    )

    events = await _events(stack, tool_request(_model(provider), parallel=True))

    completed = events[-1]
    assert isinstance(completed, ChatCompleted)
    finished = of_type(events, ToolCallFinished)
    assert sorted((f.step, f.tool, f.content) for f in finished) == [
        (0, "add", "5"),
        (0, "echo", "second"),
        (1, "echo", "round two"),
    ]
    assert completed.content == "tool results: round two"
    assert [len(s.tool_results) for s in completed.steps or []] == [2, 1, 0]
    ids = {f.tool_request_id for f in finished}
    assert len(ids) == 3


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_tool_error_and_a_timeout_are_fed_back_to_the_model(
    stack: ToolLoopStack, provider: str
) -> None:
    stack.fakes.script(
        provider,
        MODEL,
        tool_steps=[[toolbox_call("fail", message="disk full"), toolbox_call("slow", seconds=30)]],
        echo_tool_results=True,
    )

    events = await _events(stack, tool_request(_model(provider), tool_timeout=1))

    completed = events[-1]
    assert isinstance(completed, ChatCompleted)
    by_tool = {f.tool: f for f in of_type(events, ToolCallFinished)}
    assert by_tool["fail"].is_error
    assert by_tool["fail"].error is None
    assert "disk full" in by_tool["fail"].content
    assert by_tool["slow"].is_error
    assert by_tool["slow"].error is not None
    assert by_tool["slow"].error.code == "timeout"
    assert completed.content.startswith("tool results: ")
    assert "disk full" in completed.content
    assert "timeout" in completed.content
    assert completed.finish_reason == "stop"


async def test_on_tool_error_fail_ends_the_request_with_the_tools_error(
    stack: ToolLoopStack,
) -> None:
    stack.fakes.script("openai", MODEL, tool_steps=[[toolbox_call("slow", seconds=30)]])

    with pytest.raises(ChatFailedError) as failed:
        await _events(stack, tool_request(_model("openai"), tool_timeout=0.5, on_tool_error="fail"))

    assert failed.value.error.code == "timeout"
    assert "toolbox/slow" in failed.value.error.message


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_max_steps_ends_with_its_own_finish_reason(
    stack: ToolLoopStack, provider: str
) -> None:
    stack.fakes.script(
        provider, MODEL, tool_steps=[[toolbox_call("echo", text=str(n))] for n in range(5)]
    )

    completed = await stack.client.chat(tool_request(_model(provider), max_steps=2), timeout=90)

    assert completed.finish_reason == "max_steps"
    assert [s.step for s in completed.steps or []] == [0, 1]
    assert [c.name for c in completed.tool_calls] == ["toolbox__echo"]  # not run
    assert len((completed.steps or [])[0].tool_results) == 1
    assert (completed.steps or [])[1].tool_results == []


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_mixed_turn_runs_the_mcp_tool_and_returns_the_functiontoolbox_call(
    stack: ToolLoopStack, provider: str
) -> None:
    weather = {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    stack.fakes.script(
        provider,
        MODEL,
        tool_steps=[[toolbox_call("echo", text="ran"), {"name": "get_weather", "arguments": "{}"}]],
    )

    completed = await stack.client.chat(
        tool_request(_model(provider), functions=[weather]), timeout=90
    )

    assert completed.finish_reason == "tool_calls"
    assert sorted(c.name for c in completed.tool_calls) == ["get_weather", "toolbox__echo"]
    results = (completed.steps or [])[-1].tool_results
    assert [(r.tool, r.content) for r in results] == [("echo", "ran")]


async def test_a_tool_the_producer_must_confirm_comes_back_as_a_tooltoolbox_call(
    stack: ToolLoopStack,
) -> None:
    stack.fakes.script("openai", MODEL, tool_steps=[[toolbox_call("destroy", target="prod")]])

    completed = await stack.client.chat(
        tool_request(_model("openai"), auto_approve=["toolbox/echo"]), timeout=90
    )

    assert completed.finish_reason == "tool_calls"
    assert [c.name for c in completed.tool_calls] == ["toolbox__destroy"]
    assert (completed.steps or [])[-1].tool_results == []


async def test_without_streaming_only_the_completed_event_comes(stack: ToolLoopStack) -> None:
    stack.fakes.script(
        "gemini", MODEL, tool_steps=[[toolbox_call("add", a=20, b=22)]], echo_tool_results=True
    )

    events = await _events(stack, {**tool_request(_model("gemini")), "stream": False})

    assert len(events) == 1
    completed = events[0]
    assert isinstance(completed, ChatCompleted)
    assert completed.content == "tool results: 42"
    assert [len(s.tool_results) for s in completed.steps or []] == [1, 0]


async def test_a_forced_tool_choice_holds_for_the_first_turn_only(stack: ToolLoopStack) -> None:
    stack.fakes.script(
        "openai", MODEL, tool_steps=[[toolbox_call("echo", text="x")]], answer="done"
    )

    completed = await stack.client.chat(
        {**tool_request(_model("openai")), "tool_choice": "required"}, timeout=90
    )

    assert completed.content == "done"
    choices = [r.body.get("tool_choice") for r in stack.fakes.openai.chat_requests()]
    assert choices == ["required", None]


async def test_the_cli_prints_tool_calls_and_results_as_they_happen(
    stack: ToolLoopStack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack.fakes.script(
        "openai",
        MODEL,
        tool_steps=[[toolbox_call("echo", text="from the cli")]],
        echo_tool_results=True,
    )
    settings = stack.settings
    argv = [
        "chat",
        "use the tools",
        "--bootstrap-servers",
        settings.kafka_bootstrap_servers,
        "--model",
        _model("openai"),
        "--request-topic",
        settings.request_topic,
        "--reply-topic",
        settings.default_reply_topic,
        "--tools",
        "toolbox:echo",
        "--auto",
        "--timeout",
        "60",
    ]

    code = await asyncio.to_thread(ferryman, argv)

    out, err = capsys.readouterr()
    assert code == 0
    assert "tool results: from the cli" in out
    assert '→ toolbox__echo {"text": "from the cli"}' in err
    assert "← toolbox/echo (" in err
    assert "from the cli" in err.split("← toolbox/echo", 1)[1]


async def test_a_call_of_a_function_never_offered_is_answered_as_an_error(
    stack: ToolLoopStack,
) -> None:
    stack.fakes.script(
        "anthropic",
        MODEL,
        tool_steps=[
            [{"name": "toolbox__nope", "arguments": "{}"}, toolbox_call("echo", text="real")]
        ],
        echo_tool_results=True,
    )

    completed = await stack.client.chat(tool_request(_model("anthropic")), timeout=90)

    assert completed.finish_reason == "stop"
    assert "no function named 'toolbox__nope' is offered" in completed.content
    assert "real" in completed.content
    results = {r.tool: r for r in (completed.steps or [])[0].tool_results}
    assert results["toolbox__nope"].error_code == "not_found"
    assert results["echo"].is_error is False
