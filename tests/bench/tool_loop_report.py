"""The tool-loop bench's bookkeeping (no Kafka, no processes): the marks of one loop request
read from the events its client received, percentile summaries, the overhead per step
(loop minus direct, percentile by percentile) and the table's rows."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from ferryman.contracts import (
    ChatChunk,
    ChatCompleted,
    ChatProgress,
    ToolCallFinished,
    ToolCallStarted,
)
from tests.bench.bare import pct
from tests.bench.report import Row

QUANTILES = (50, 95, 99)
TimedEvent = tuple[float, Any]
"""(`time.monotonic()` when the client yielded the event, the event)."""


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """`n`, `mean`, `p50`/`p95`/`p99` (nearest rank) and `max` of `values` (None when empty)."""
    out: dict[str, float | int | None] = {"n": len(values)}
    out["mean"] = statistics.fmean(values) if values else None
    for q in QUANTILES:
        out[f"p{q}"] = pct(list(values), q)
    out["max"] = max(values) if values else None
    return out


def minus(loop: dict[str, Any], direct: dict[str, Any]) -> dict[str, float | None]:
    """`loop` minus `direct`, percentile by percentile (`p50`, `p95`, `p99`, and `mean`):
    what the loop adds to a call at that rank. None where either side has no figure."""
    out: dict[str, float | None] = {}
    for key in ("mean", *(f"p{q}" for q in QUANTILES)):
        mine, floor = loop.get(key), direct.get(key)
        out[key] = None if mine is None or floor is None else mine - floor
    return out


def loop_marks(sent: float, timed: Sequence[TimedEvent]) -> dict[str, float]:
    """The figures (ms) of one loop request whose model called one tool in step 0 and answered
    in step 1, from its events as the client received them (`sent`: just before publishing).

    `e2e_ms`: publish to `ChatCompleted`. `tool_call_ms`: `ToolCallFinished.duration_ms`
    (dispatch to result, as the LLM worker measured it). `step_gap_ms`: `ToolCallStarted` to
    `ChatProgress(step_started, step=1)`. `step_overhead_ms`: the last event of step 0's model
    answer (its last chunk, else its `step_started`) to step 1's `step_started`: the step
    record, the dispatch, the tool and the result. `first_step_ms`: publish to step 0's
    `step_started` (the request hop and the loop's start). `final_turn_ms`: step 1's
    `step_started` to `ChatCompleted`.

    Raises:
        ValueError: an expected event is missing (the request did not run one tool step).
    """

    def first(kind: type, **match: Any) -> TimedEvent:
        for at, event in timed:
            if isinstance(event, kind) and all(getattr(event, k) == v for k, v in match.items()):
                return at, event
        wanted = ", ".join(f"{k}={v}" for k, v in match.items())
        raise ValueError(f"no {kind.__name__}({wanted}) among the request's events")

    step0, _ = first(ChatProgress, stage="step_started", step=0)
    waiting, _ = first(ChatProgress, stage="waiting_tools", step=0)
    called, _ = first(ToolCallStarted, step=0)
    _, finished = first(ToolCallFinished, step=0)
    step1, _ = first(ChatProgress, stage="step_started", step=1)
    done, _ = first(ChatCompleted)
    answer = [at for at, e in timed if isinstance(e, ChatChunk) and e.step == 0 and at <= waiting]
    answer_end = max(answer, default=step0)
    ms = 1000.0
    return {
        "e2e_ms": (done - sent) * ms,
        "tool_call_ms": float(finished.duration_ms),
        "step_gap_ms": (step1 - called) * ms,
        "step_overhead_ms": (step1 - answer_end) * ms,
        "first_step_ms": (step0 - sent) * ms,
        "final_turn_ms": (done - step1) * ms,
    }


def summarize(samples: Sequence[dict[str, float]]) -> dict[str, dict[str, float | int | None]]:
    """Each figure of `samples` (dicts with the same keys) summarized over the samples."""
    keys = sorted({key for sample in samples for key in sample})
    return {key: summary([s[key] for s in samples if key in s]) for key in keys}


def overheads(
    loop: dict[str, Any], direct: dict[str, Any], requests: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The overhead per step of one tool, percentile by percentile: the loop's tool call minus
    the direct call; the whole step (its record included) minus the direct call; and, from
    `requests` (`model_only`, `loop_no_call` summaries), the loop request's end to end minus
    the same loop whose model calls nothing (one step: the tool and one more model turn), and
    minus the model-only request (the loop's start-up too)."""
    out: dict[str, Any] = {
        "tool_call_minus_direct_ms": minus(loop.get("tool_call_ms", {}), direct),
        "step_overhead_minus_direct_ms": minus(loop.get("step_overhead_ms", {}), direct),
    }
    e2e = loop.get("e2e_ms", {})
    for name, key in (("loop_no_call", "e2e_minus_no_call_ms"),
                      ("model_only", "e2e_minus_model_only_ms")):  # fmt: skip
        other = (requests or {}).get(name, {}).get("e2e_ms")
        if other is not None:
            out[key] = minus(e2e, other)
    return out


def rows(results: dict[str, Any]) -> list[Row]:
    """The printed table: per tool, the direct call, the loop's figures and the overhead; then
    the request-level figures and the concurrency sweep. Every cell is `p50 / p99` in ms."""
    table: list[Row] = []
    q = "p50/p99"
    for tool in results.get("tools", {}):
        at, loop = ("tools", tool), ("tools", tool, "loop")
        over = ("tools", tool, "overhead")
        table += [
            (f"{tool}: direct call", (*at, "direct"), q, "", None),
            (f"{tool}: loop's tool call", (*loop, "tool_call_ms"), q, "", None),
            (f"{tool}: OVERHEAD per step", (*over, "tool_call_minus_direct_ms"), q, "", None),
            (f"{tool}: same, with step record", (*over, "step_overhead_minus_direct_ms"), q, "",
             None),
            (f"{tool}: mcp_worker's own call", (*loop, "mcp_call_ms"), q, "", None),
            (f"{tool}: two hops (call - own)", (*loop, "hops_ms"), q, "", None),
            (f"{tool}: step record (1 produce)", (*loop, "step_record_ms"), q, "", None),
            (f"{tool}: called -> step 1 started", (*loop, "step_gap_ms"), q, "", None),
            (f"{tool}: loop request e2e", (*loop, "e2e_ms"), q, "", None),
            (f"{tool}: e2e - loop, no call", (*over, "e2e_minus_no_call_ms"), q, "", None),
            (f"{tool}: e2e - model only", (*over, "e2e_minus_model_only_ms"), q, "", None),
        ]  # fmt: skip
    requests = ("requests",)
    table += [
        ("model only: e2e", (*requests, "model_only", "e2e_ms"), q, "", None),
        ("loop, no tool call: e2e", (*requests, "loop_no_call", "e2e_ms"), q, "", None),
        ("loop start: journal sync", (*requests, "loop_no_call", "journal_sync_ms"), q, "", None),
    ]  # fmt: skip
    for level in results.get("sweep", {}):
        at = ("sweep", level)
        table += [
            (f"{level} in flight: loops/s", at, "loops_per_s", "", None),
            (f"{level} in flight: e2e", (*at, "e2e_ms"), q, "", None),
            (f"{level} in flight: tool call", (*at, "tool_call_ms"), q, "", None),
            (f"{level} in flight: journal sync", (*at, "journal_sync_ms"), q, "", None),
            (f"{level} in flight: done / failed", at, "completed/failed", "", None),
        ]  # fmt: skip
    return table
