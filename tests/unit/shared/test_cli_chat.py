"""`ferryman chat`: tool options, the lines printed for each event, and Ctrl-C cancelling the
request — driven through a real client whose Kafka is a script (no broker)."""

from __future__ import annotations

import argparse
import asyncio
import io
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from ferryman.cli import build_parser, main
from ferryman.cli_chat import (
    CANCEL_REASON,
    ChatPrinter,
    chat_request,
    run_chat,
    summary_line,
    tool_result_line,
)
from ferryman.client import ChatEvent, FerrymanClient, RunRestarted
from ferryman.codec import header_value
from ferryman.contracts import (
    LLM_CHAT_CHUNK,
    LLM_CHAT_COMPLETED,
    LLM_CHAT_FAILED,
    LLM_CHAT_PROGRESS,
    LLM_CHAT_TOOL_CALLED,
    LLM_CHAT_TOOL_RESULT,
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatProgress,
    ChatRestarted,
    ChunkDelta,
    CompletedToolCall,
    ErrorCode,
    ErrorInfo,
    Latency,
    ToolCallFinished,
    ToolCallStarted,
    Usage,
)
from ferryman.contracts.llm import StepInfo, StepToolResult
from ferryman.contracts.mcp import CancelRequest
from tests.fakes.chat_bus import CANCELLED, ScriptedBus

ROOT = Path(__file__).resolve().parents[3]


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["chat", "What time is it?", *argv])


def test_tools_become_mcp_toolsets_and_auto_runs_them() -> None:
    args = parse(
        "--tools",
        "time,fetch:get_*",
        "--tools",
        "fetch:head_*,time",
        "--auto",
        "--max-steps",
        "3",
        "--tool-timeout",
        "2.5",
        "--tenant",
        "acme",
        "-v",
    )

    request = chat_request(args)

    assert [tool.model_dump() for tool in request.mcp_toolsets()] == [
        {"type": "mcp", "server": "time", "tools": ["*"]},
        {"type": "mcp", "server": "fetch", "tools": ["get_*", "head_*"]},
    ]
    assert request.tool_execution is not None
    assert (request.tool_execution.mode, request.tool_execution.max_steps) == ("auto", 3)
    assert request.tool_execution.tool_timeout == 2.5
    assert (args.tenant, args.verbose) == ("acme", True)


def test_without_tool_options_the_request_is_a_plain_chat() -> None:
    request = chat_request(parse())

    assert (request.tools, request.tool_execution) == (None, None)


def test_tools_without_auto_are_offered_but_not_run() -> None:
    request = chat_request(parse("--tools", "time"))

    assert len(request.mcp_toolsets()) == 1
    assert request.tool_execution is None


@pytest.mark.parametrize(
    ("value", "message"),
    [("time,,fetch", "is not SERVER"), ("time:", "is not SERVER"), ("bad name", "server name")],
)
def test_a_malformed_tools_value_is_a_usage_error(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse("--tools", value)

    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--auto"], "--auto needs --tools"),
        (["--tools", "time", "--max-steps", "3"], "need --auto"),
        (["--tools", "time", "--tool-timeout", "3"], "need --auto"),
    ],
)
def test_inconsistent_tool_options_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        chat_request(parse(*argv))


def test_an_out_of_range_step_limit_exits_2_before_connecting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ValidationError):
        chat_request(parse("--tools", "time", "--auto", "--max-steps", "0"))

    # Nothing listens on this port: the request is refused before any connection.
    argv = ["chat", "hi", "--tools", "time", "--auto", "--max-steps", "99", "-b", "127.0.0.1:1"]
    assert main(argv) == 2

    assert "tool_execution.max_steps" in capsys.readouterr().err


CALLED = ToolCallStarted(
    step=0,
    call_id="call-1",
    name="time__get_current_time",
    server="time",
    tool="get_current_time",
    arguments='{"timezone": "UTC"}',
    tool_request_id="q.0.0",
)
RESULT = ToolCallFinished(
    step=0,
    call_id="call-1",
    server="time",
    tool="get_current_time",
    tool_request_id="q.0.0",
    content='{\n  "datetime": "2025-01-01T00:00:00Z"\n}',
    duration_ms=12.4,
)
USAGE = Usage(input_tokens=30, output_tokens=9)
COMPLETED = ChatCompleted(
    content="It is midnight.",
    tool_calls=[],
    finish_reason="stop",
    usage=USAGE,
    provider="mock",
    model="echo",
    chunk_count=3,
    latency_ms=Latency(total=41.6),
    steps=[
        StepInfo(
            step=0,
            content="Let me check.",
            tool_calls=[CompletedToolCall(id="call-1", name=CALLED.name, arguments="{}")],
            finish_reason="tool_calls",
            usage=USAGE,
            tool_results=[
                StepToolResult(
                    call_id="call-1",
                    server="time",
                    tool="get_current_time",
                    is_error=False,
                    duration_ms=12.4,
                )
            ],
        ),
        StepInfo(
            step=1, content="It is midnight.", tool_calls=[], finish_reason="stop", usage=USAGE
        ),
    ],
)


def chunk(index: int, text: str, step: int) -> ChatChunk:
    return ChatChunk(index=index, step=step, delta=ChunkDelta(content=text))


def printed(events: list[ChatEvent], **settings: bool) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    printer = ChatPrinter(out, err, **settings)
    for event in events:
        printer.show(event)
    return out.getvalue(), err.getvalue()


def test_the_answer_goes_to_stdout_and_the_tool_loop_to_stderr() -> None:
    events: list[ChatEvent] = [
        ChatProgress(stage="step_started", step=0, sequence=0),
        chunk(0, "Let me ", 0),
        chunk(1, "check.", 0),
        CALLED,
        RESULT,
        ChatProgress(stage="step_started", step=1, sequence=3, message="after 1 tool call"),
        chunk(0, "It is midnight.", 1),
        COMPLETED,
    ]

    out, err = printed(events)
    verbose_out, verbose_err = printed(events, verbose=True)

    assert out == verbose_out == "Let me check.\nIt is midnight.\n"
    assert err.splitlines() == [
        '→ time__get_current_time {"timezone": "UTC"}',
        '← time/get_current_time (12 ms) { "datetime": "2025-01-01T00:00:00Z" }',
        "[mock/echo · stop · 2 steps, 1 tool calls · 30 in / 9 out · 42 ms]",
    ]
    assert verbose_err.splitlines() == [
        "· step 0 step_started",
        *err.splitlines()[:2],
        "· step 1 step_started: after 1 tool call",
        err.splitlines()[2],
    ]


def test_a_tool_result_line_marks_errors_cached_and_replayed_and_cuts_long_content() -> None:
    timed_out = RESULT.model_copy(
        update={
            "is_error": True,
            "content": "",
            "error": ErrorInfo(code=ErrorCode.TIMEOUT, message="no answer in 5 s", retryable=True),
            "duration_ms": 5000.0,
        }
    )
    own_error = RESULT.model_copy(update={"is_error": True, "content": "unknown timezone"})
    cached = RESULT.model_copy(update={"cached": True, "replayed": True, "content": "x" * 500})

    assert tool_result_line(timed_out) == (
        "← time/get_current_time (5000 ms) error: timeout: no answer in 5 s"
    )
    assert tool_result_line(own_error) == "← time/get_current_time (12 ms) error: unknown timezone"
    line = tool_result_line(cached)
    assert line.startswith("← time/get_current_time (12 ms, cached, replayed) xxx")
    assert line.endswith("x…")
    assert len(line.split(") ", 1)[1]) == 200


def test_restarts_reruns_and_plain_tool_calls_are_shown() -> None:
    cut = ErrorInfo(code=ErrorCode.UNAVAILABLE, message="cut", retryable=True)
    asked = COMPLETED.model_copy(
        update={
            "steps": None,
            "finish_reason": "tool_calls",
            "tool_calls": [CompletedToolCall(id="c9", name="lookup", arguments='{"q":1}')],
        }
    )
    events: list[ChatEvent] = [
        chunk(0, "It is", 1),
        ChatRestarted(attempt=2, discarded_chunks=1, reason=cut, deployment="spare", step=1),
        RunRestarted(run_id="r2", previous_run_id="r1", discarded_chunks=3),
        asked,
    ]

    out, err = printed(events)

    assert out == 'It is\ntool call c9: lookup({"q":1})\n'
    assert err.splitlines() == [
        "[restarted step 1 on spare: unavailable; discarding 1 chunks]",
        "[the request runs again (run r2); discarding 3 chunks]",
        "[mock/echo · tool_calls · 30 in / 9 out · 42 ms]",
    ]
    assert summary_line(asked) == err.splitlines()[-1]


def test_json_prints_only_the_completed_event_on_stdout() -> None:
    out, err = printed([chunk(0, "Let me check.", 0), CALLED, COMPLETED], json_output=True)

    assert ChatCompleted.model_validate_json(out) == COMPLETED
    assert err.splitlines()[0].startswith("→ time__get_current_time")


TOOL_LOOP = [
    (LLM_CHAT_PROGRESS, ChatProgress(stage="step_started", step=0, sequence=0)),
    (LLM_CHAT_CHUNK, chunk(0, "Let me check.", 0)),
    (LLM_CHAT_TOOL_CALLED, CALLED),
    (LLM_CHAT_TOOL_RESULT, RESULT),
    (LLM_CHAT_CHUNK, chunk(0, "It is midnight.", 1)),
    (LLM_CHAT_COMPLETED, COMPLETED),
]


class Terminal:
    """Captures what the CLI prints, and tells when a line containing `mark` reached
    stderr."""

    def __init__(self, mark: str = "\n") -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        self.printer = _SignallingPrinter(self, mark)
        self.marked = asyncio.Event()


class _SignallingPrinter(ChatPrinter):
    def __init__(self, terminal: Terminal, mark: str) -> None:
        super().__init__(terminal.out, terminal.err)
        self._terminal, self._mark = terminal, mark

    def line(self, text: str) -> None:
        super().line(text)
        if self._mark in text:
            self._terminal.marked.set()


async def test_a_chat_with_a_tool_loop_prints_it_and_exits_0() -> None:
    bus = ScriptedBus(TOOL_LOOP)
    client = bus.attach(FerrymanClient("unused:9092"))
    terminal = Terminal()

    code = await run_chat(client, chat_request(parse()), terminal.printer, timeout=5, tenant="t")

    assert code == 0
    assert terminal.out.getvalue() == "Let me check.\nIt is midnight.\n"
    assert terminal.err.getvalue().splitlines()[0] == '→ time__get_current_time {"timezone": "UTC"}'
    assert bus.cancels == []


async def test_a_failed_chat_exits_1_and_says_why() -> None:
    failure = ErrorInfo(
        code=ErrorCode.PERMISSION_DENIED, message="tool not allowed", retryable=False
    )
    bus = ScriptedBus(
        [(LLM_CHAT_TOOL_CALLED, CALLED), (LLM_CHAT_FAILED, ChatFailed(error=failure))]
    )
    client = bus.attach(FerrymanClient("unused:9092"))
    terminal = Terminal()

    code = await run_chat(client, chat_request(parse()), terminal.printer, timeout=5)

    assert code == 1
    assert terminal.err.getvalue().splitlines()[-1] == (
        "failed: permission_denied: tool not allowed"
    )


async def test_an_interrupt_cancels_the_request_prints_the_cancelled_end_and_exits_130() -> None:
    bus = ScriptedBus(TOOL_LOOP[:3], on_cancel=[CANCELLED])
    client = bus.attach(FerrymanClient("unused:9092", source="/cli"))
    terminal = Terminal(mark="→ ")

    chat = asyncio.create_task(
        run_chat(client, chat_request(parse()), terminal.printer, timeout=5, cancel_grace=5)
    )
    await asyncio.wait_for(terminal.marked.wait(), 5)
    chat.cancel()  # what asyncio.run does with the main task on Ctrl-C
    code = await asyncio.wait_for(chat, 10)

    assert code == 130
    [request] = [p for p in bus.published if p not in bus.cancels]
    request_id = header_value(request.headers, "ce_id")
    assert request_id is not None
    assert bus.cancel_requests() == [
        CancelRequest(request_id=request_id, source="/cli", reason=CANCEL_REASON)
    ]
    assert terminal.err.getvalue().splitlines()[-2:] == [
        f"[interrupted: cancelling request {request_id}]",
        "failed: cancelled: cancelled by the producer",
    ]
    assert terminal.out.getvalue() == "Let me check.\n"


async def test_an_interrupt_gives_up_waiting_after_the_grace_period() -> None:
    bus = ScriptedBus(TOOL_LOOP[:3], on_cancel=[])  # the worker never answers the cancel
    client = bus.attach(FerrymanClient("unused:9092"))
    terminal = Terminal(mark="→ ")

    chat = asyncio.create_task(
        run_chat(client, chat_request(parse()), terminal.printer, timeout=30, cancel_grace=0.2)
    )
    await asyncio.wait_for(terminal.marked.wait(), 5)
    chat.cancel()

    assert await asyncio.wait_for(chat, 10) == 130
    assert len(bus.cancels) == 1
    assert terminal.err.getvalue().splitlines()[-1] == (
        "[no end of the request within 0.2 s of the cancel; it may still run]"
    )


_SIGINT_SCRIPT = textwrap.dedent(
    """
    import asyncio, signal, sys
    # A parent that ignores SIGINT (a shell's background job, as CI may be) passes that on,
    # and asyncio.run then leaves Ctrl-C alone: restore what a terminal gives.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from ferryman.cli_chat import ChatPrinter, chat_request, run_chat
    from ferryman.cli import build_parser
    from ferryman.client import FerrymanClient
    from tests.fakes.chat_bus import CANCELLED, ScriptedBus
    from tests.unit.shared.test_cli_chat import TOOL_LOOP

    async def chat() -> int:
        bus = ScriptedBus(TOOL_LOOP[:3], on_cancel=[CANCELLED])
        client = bus.attach(FerrymanClient("unused:9092"))
        request = chat_request(build_parser().parse_args(["chat", "hi"]))
        printer = ChatPrinter(sys.stdout, sys.stderr)
        code = await run_chat(client, request, printer, timeout=30)
        print(f"cancels={len(bus.cancels)}", file=sys.stderr)
        return code

    sys.exit(asyncio.run(chat()))
    """
)


def test_ctrl_c_under_asyncio_run_cancels_the_request_and_exits_130() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", _SIGINT_SCRIPT],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        first = process.stderr.readline()  # blocks until the tool call is shown
        process.send_signal(signal.SIGINT)
        try:
            # Longer than the chat's own 30 s timeout: a lost interrupt shows as that.
            out, rest = process.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            process.kill()
            out, rest = process.communicate()
            raise AssertionError(
                f"no exit after SIGINT; first line {first!r}; stdout {out!r}; stderr {rest!r}"
            ) from None
    finally:
        process.kill()

    assert first.startswith("→ time__get_current_time")
    assert process.returncode == 130
    assert out == "Let me check.\n"
    assert rest.splitlines()[-2:] == [
        "failed: cancelled: cancelled by the producer",
        "cancels=1",
    ]
