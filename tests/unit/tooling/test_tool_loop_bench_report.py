"""The tool-loop bench's bookkeeping: a loop request's marks from its timed events, the
summaries, the overhead per step and the table (no Kafka, no processes)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ferryman.contracts import (
    ChatChunk,
    ChatCompleted,
    ChatProgress,
    ToolCallFinished,
    ToolCallStarted,
)
from ferryman.contracts.llm import ChunkDelta, Latency, Usage
from tests.bench.report import report
from tests.bench.tool_loop_bench import parse_args
from tests.bench.tool_loop_report import loop_marks, minus, overheads, rows, summarize, summary


def progress(stage: str, step: int, sequence: int) -> ChatProgress:
    return ChatProgress.model_validate({"stage": stage, "step": step, "sequence": sequence})


def chunk(step: int) -> ChatChunk:
    return ChatChunk(index=0, delta=ChunkDelta(content="x"), step=step)


def one_step_events(duration_ms: float = 12.5) -> list[tuple[float, Any]]:
    """A request sent at t=10.0 s whose model called one tool, as the client saw it."""
    call_id, server, tool, request_id = "c0", "toolbox", "echo", "tl-1"
    completed = ChatCompleted(
        content="done", tool_calls=[], finish_reason="stop", provider="openai",
        usage=Usage(input_tokens=1, output_tokens=1), model="openai/m", chunk_count=3,
        latency_ms=Latency(total=1.0),
    )  # fmt: skip
    return [
        (10.100, progress("step_started", 0, 0)),
        (10.110, chunk(0)),
        (10.120, chunk(0)),
        (10.125, progress("waiting_tools", 0, 1)),
        (
            10.130,
            ToolCallStarted(
                step=0,
                call_id=call_id,
                name="toolbox__echo",
                server=server,
                tool=tool,
                arguments="{}",
                tool_request_id=request_id,
            ),
        ),
        (
            10.150,
            ToolCallFinished(
                step=0,
                call_id=call_id,
                server=server,
                tool=tool,
                tool_request_id=request_id,
                content="x",
                duration_ms=duration_ms,
            ),
        ),
        (10.160, progress("step_started", 1, 2)),
        (10.170, chunk(1)),
        (10.200, completed),
    ]


def test_loop_marks_time_the_step_from_the_events_arrival() -> None:
    marks = loop_marks(10.0, one_step_events())

    assert marks["e2e_ms"] == pytest.approx(200.0)
    assert marks["tool_call_ms"] == 12.5  # the worker's own figure, not an arrival gap
    assert marks["step_gap_ms"] == pytest.approx(30.0)  # tool.called -> step 1 started
    assert marks["step_overhead_ms"] == pytest.approx(40.0)  # step 0's last chunk -> step 1
    assert marks["first_step_ms"] == pytest.approx(100.0)
    assert marks["final_turn_ms"] == pytest.approx(40.0)


def test_without_chunks_step_0_ends_at_its_step_started() -> None:
    events = [e for e in one_step_events() if not isinstance(e[1], ChatChunk)]

    assert loop_marks(10.0, events)["step_overhead_ms"] == pytest.approx(60.0)


def test_a_request_that_ran_no_tool_step_is_refused_by_name() -> None:
    events = [e for e in one_step_events() if not isinstance(e[1], ToolCallFinished)]

    with pytest.raises(ValueError, match="ToolCallFinished"):
        loop_marks(10.0, events)


def test_summary_uses_nearest_rank_and_handles_no_values() -> None:
    figures = summary([float(v) for v in range(1, 101)])

    assert figures["n"] == 100
    assert figures["p50"] == 51.0
    assert figures["p99"] == 99.0
    assert figures["max"] == 100.0
    assert figures["mean"] == pytest.approx(50.5)
    assert summary([]) == {"n": 0, "mean": None, "p50": None, "p95": None, "p99": None,
                           "max": None}  # fmt: skip


def test_summarize_keeps_each_figure_only_where_a_sample_has_it() -> None:
    out = summarize([{"e2e_ms": 5.0, "hops_ms": 1.0}, {"e2e_ms": 7.0}])

    assert out["e2e_ms"]["n"] == 2
    assert out["hops_ms"]["n"] == 1


def test_overhead_is_loop_minus_direct_at_each_rank() -> None:
    direct = {"mean": 1.0, "p50": 1.0, "p95": 2.0, "p99": 3.0}
    loop = {
        "tool_call_ms": {"mean": 9.0, "p50": 8.0, "p95": 12.0, "p99": 20.0},
        "step_overhead_ms": {"p50": 11.0, "p99": None},
        "e2e_ms": {"p50": 530.0, "p99": 560.0},
    }
    requests = {"loop_no_call": {"e2e_ms": {"p50": 500.0, "p99": 510.0}}}

    out = overheads(loop, direct, requests)

    assert out["tool_call_minus_direct_ms"] == {"mean": 8.0, "p50": 7.0, "p95": 10.0, "p99": 17.0}
    assert out["step_overhead_minus_direct_ms"]["p50"] == 10.0
    assert out["step_overhead_minus_direct_ms"]["p99"] is None  # nothing invented
    assert out["e2e_minus_no_call_ms"]["p99"] == 50.0
    assert "e2e_minus_model_only_ms" not in out  # no model-only figures were given
    assert minus({}, direct) == {"mean": None, "p50": None, "p95": None, "p99": None}


def test_the_table_prints_each_tools_overhead(capsys: pytest.CaptureFixture[str]) -> None:
    direct = {"p50": 1.0, "p99": 3.0}
    loop = {"tool_call_ms": {"p50": 8.0, "p99": 20.0}}
    results: dict[str, Any] = {
        "tools": {"echo": {"direct": direct, "loop": loop, "overhead": overheads(loop, direct)}},
        "sweep": {"10": {"loops_per_s": 16.5, "completed": 30, "failed": 0}},
    }

    report(results, rows(results))

    lines = capsys.readouterr().out.splitlines()
    assert any("echo: OVERHEAD per step" in line and "7.00 / 17.00" in line for line in lines)
    assert any("10 in flight: done / failed" in line and "30 / 0" in line for line in lines)
    assert json.loads(lines[-1].removeprefix("BENCH_JSON "))["tools"]["echo"]["direct"] == direct


def test_quick_sets_smaller_defaults_and_explicit_options_win() -> None:
    quick = parse_args(["--quick", "--loop-iterations", "7"])

    assert quick.loop_iterations == 7
    assert quick.iterations == 40
    assert parse_args([]).tools == ["echo", "add"]
    with pytest.raises(SystemExit):
        parse_args(["--tools", "echo,nope"])
