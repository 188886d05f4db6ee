"""The tool loop's overhead per step: an MCP tool called by the LLM worker's tool loop (two
Kafka hops: the call to the mcp_worker, its result back on the tool-loop topic) against the
same tool called directly over an MCP stdio session.

`uv run --frozen python -m tests.bench.tool_loop_bench [--quick]` (what `make bench-tool-loop`
runs). Everything runs in this process on one asyncio event loop (the harness's fake servers
need asyncio's own loop; a worker process runs on uvloop), on the real
Kafka (`KAFKA_BOOTSTRAP_SERVERS`, else the local broker of `tools/kafka/local_kafka.py`):
`tests/integration/tool_loop_harness.py: tool_loop_stack` starts the fake providers, an
mcp_worker on the toolbox MCP server over stdio (`cache: off`, so every call reaches it), an
LLM worker and a `FerrymanClient`, with fresh topics.

Sequential, one request at a time, each phase after `--warmup` unmeasured ones:

1. direct: `--iterations` calls of each of `--tools` (`echo` with a short text, `add`)
   through `mcp.Client` over stdio to the toolbox (the command of `toolbox_stdio()`), timed
   around `call_tool`.
2. model only: `--iterations` chat requests with no tools (the OpenAI fake, no token delay).
3. loop, no tool call: `--no-call-iterations` requests offering the toolbox with
   `tool_execution: auto` whose model answers at once: what a loop request costs before
   any step.
4. loop: per tool, `--loop-iterations` requests whose model calls the tool once (fresh
   arguments each time) and then answers. Per request, from the client's events: the tool
   call's `ToolCallFinished.duration_ms`, `ToolCallStarted` to step 1's `step_started`, the
   end of step 0's answer to step 1's `step_started`, end to end; from the LLM worker's
   journal (its methods wrapped here, no worker code changed): the step record (one acked
   produce), the loop's start-up sync, and the mcp_worker's own duration of the call.

Overhead per step = loop tool call - direct call, percentile by percentile. `--concurrency`
(10,50): `--sweep-requests` loop requests with that many in flight, for throughput.

Prints a table and one `BENCH_JSON {...}` line, writes the JSON to `--out` (default
`.bench/tool-loop-bench-<UTC time>.json`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import logging
import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ferryman.publisher import KafkaPublisher
from llm_worker.tool_loop.journal import LoopJournal
from tests.bench import tool_loop_report as tr
from tests.bench.mcp_bare import client as mcp_client
from tests.bench.mcp_bench import machine
from tests.bench.procs import ROOT, kafka_bootstrap
from tests.bench.report import report
from tests.integration.test_mcp_worker_e2e import toolbox_entry
from tests.integration.tool_loop_harness import ToolLoopStack, tool_loop_stack, tool_request

QUICK = {
    "iterations": 40,
    "loop_iterations": 15,
    "no_call_iterations": 10,
    "warmup": 3,
    "sweep_requests": 30,
}
TOOLS: dict[str, Callable[[int], dict[str, Any]]] = {
    "echo": lambda i: {"text": f"bench {i}"},
    "add": lambda i: {"a": i, "b": 1},
}
TIMEOUT = 60.0


class JournalProbe:
    """Times the LLM worker's journal calls by wrapping them on the instance: the step record
    (one acked produce), the sync at a loop's start, and the wait for a tool's result (whose
    outcome holds the mcp_worker's own duration of the call)."""

    def __init__(self, journal: LoopJournal) -> None:
        self.figures: dict[str, list[float]] = {"step_record_ms": [], "journal_sync_ms": [],
                                                "mcp_call_ms": []}  # fmt: skip
        record, sync, wait_result = journal.record, journal.sync, journal.wait_result

        async def timed_record(step: Any) -> None:
            started = time.monotonic()
            await record(step)
            self.figures["step_record_ms"].append((time.monotonic() - started) * 1000)

        async def timed_sync(timeout: float) -> None:
            started = time.monotonic()
            await sync(timeout)
            self.figures["journal_sync_ms"].append((time.monotonic() - started) * 1000)

        async def timed_wait(tool_request_id: str, timeout: float) -> Any:
            outcome = await wait_result(tool_request_id, timeout)
            if outcome is not None and outcome.completed is not None:
                self.figures["mcp_call_ms"].append(outcome.completed.duration_ms)
            return outcome

        setattr(journal, "record", timed_record)  # noqa: B010 - an instance wrapper, not a stub
        setattr(journal, "sync", timed_sync)  # noqa: B010
        setattr(journal, "wait_result", timed_wait)  # noqa: B010

    def take_all(self) -> dict[str, Any]:
        """Each figure summarized over every request since the last take, and forget all."""
        out = {key: tr.summary(values) for key, values in self.figures.items() if values}
        for values in self.figures.values():
            values.clear()
        return out

    def take(self) -> dict[str, float]:
        """The figures of the request that just ended (the last of each), and forget all."""
        out = {key: values[-1] for key, values in self.figures.items() if values}
        for values in self.figures.values():
            values.clear()
        return out


async def direct_calls(tool: str, iterations: int, warmup: int) -> dict[str, Any]:
    """Latency (ms) of `iterations` sequential `tool` calls over one MCP stdio session."""
    latencies: list[float] = []
    stdio = argparse.Namespace(transport="stdio", url=None, pool=0)
    async with mcp_client(stdio) as mcp:
        for i in range(warmup + iterations):
            started = time.monotonic()
            result = await mcp.call_tool(tool, TOOLS[tool](i))
            elapsed = (time.monotonic() - started) * 1000
            if result.is_error:
                raise RuntimeError(f"direct {tool} failed: {result.content}")
            if i >= warmup:
                latencies.append(elapsed)
    return tr.summary(latencies)


async def timed_events(stack: ToolLoopStack, request: dict[str, Any]) -> tuple[float, list[Any]]:
    """Publish `request`; (when, its events each with their arrival time)."""
    sent = time.monotonic()
    timed = [(time.monotonic(), event)
             async for event in stack.client.chat_stream(request, timeout=TIMEOUT)]  # fmt: skip
    return sent, timed


def script_call(stack: ToolLoopStack, model: str, tool: str, i: int) -> None:
    """The fake's model calls `tool` once (arguments fresh for `i`), then answers."""
    call = {"name": f"toolbox__{tool}", "arguments": json.dumps(TOOLS[tool](i))}
    stack.fakes.script("openai", model, tool_steps=[[call]], echo_tool_results=True)


async def loop_phase(
    stack: ToolLoopStack, probe: JournalProbe, tool: str, iterations: int, warmup: int
) -> dict[str, Any]:
    """Per figure, its summary over `iterations` loop requests that call `tool` once."""
    model = f"bench-{tool}"
    samples: list[dict[str, float]] = []
    for i in range(warmup + iterations):
        script_call(stack, model, tool, i)
        sent, timed = await timed_events(stack, tool_request(f"openai/{model}"))
        sample = {**tr.loop_marks(sent, timed), **probe.take()}
        if "mcp_call_ms" in sample:
            sample["hops_ms"] = sample["tool_call_ms"] - sample["mcp_call_ms"]
        if i >= warmup:
            samples.append(sample)
    return tr.summarize(samples)


async def request_phase(
    stack: ToolLoopStack, probe: JournalProbe, request: dict[str, Any], count: int, warmup: int
) -> dict[str, Any]:
    """End to end (ms) of `count` requests that run no tool (and the journal figures)."""
    samples: list[dict[str, float]] = []
    for i in range(warmup + count):
        sent, timed = await timed_events(stack, request)
        sample = {"e2e_ms": (timed[-1][0] - sent) * 1000, **probe.take()}
        if i >= warmup:
            samples.append(sample)
    return tr.summarize(samples)


async def sweep_level(
    stack: ToolLoopStack, probe: JournalProbe, level: int, requests: int
) -> dict[str, Any]:
    """`requests` loop requests calling `echo` once, `level` in flight at a time."""
    model = f"bench-sweep-{level}"
    script_call(stack, model, "echo", level)
    gate = asyncio.Semaphore(level)
    samples: list[dict[str, float]] = []
    failures: list[str] = []

    async def one() -> None:
        async with gate:
            try:
                sent, timed = await timed_events(stack, tool_request(f"openai/{model}"))
                samples.append(tr.loop_marks(sent, timed))
            except Exception as exc:  # counted and reported, never hidden
                failures.append(f"{type(exc).__name__}: {exc}"[:300])

    probe.take_all()
    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(requests)))
    wall = time.monotonic() - started
    return {"in_flight": level, "completed": len(samples), "failed": len(failures),
            "first_failure": failures[0] if failures else None, "wall_s": wall,
            "loops_per_s": len(samples) / wall, **tr.summarize(samples),
            **probe.take_all()}  # fmt: skip


def kafka_setup(stack: ToolLoopStack, bootstrap: str) -> dict[str, Any]:
    """How the figures' Kafka was set up."""
    return {
        "bootstrap": bootstrap,
        "brokers": "one local broker (tools/kafka/local_kafka.py) unless KAFKA_BOOTSTRAP_SERVERS",
        "producer": "acks=all, idempotence on (ferryman.publisher.KafkaPublisher)",
        "llm_worker_linger_ms": stack.settings.producer_linger_ms,
        "mcp_worker_linger_ms": stack.mcp.settings.producer_linger_ms,
        "client_linger_ms": inspect.signature(KafkaPublisher).parameters["linger_ms"].default,
        "topic_partitions": stack.settings.topic_partitions,
        "tool_loop_topic": stack.settings.tool_loop_topic,
    }


async def bench(args: argparse.Namespace, bootstrap: str, results: dict[str, Any]) -> None:
    """Every phase, into `results`."""
    servers = {"toolbox": toolbox_entry(cache={"mode": "off"})}
    with tempfile.TemporaryDirectory() as tmp:
        unique = f"bench-{uuid.uuid4().hex[:8]}"
        async with tool_loop_stack(bootstrap, unique, Path(tmp), servers=servers) as stack:
            results["kafka"] = kafka_setup(stack, bootstrap)
            probe = JournalProbe(stack.llm.journal)
            tools: dict[str, Any] = {tool: {} for tool in args.tools}
            results["tools"] = tools
            for tool in args.tools:  # while the stack idles, on the same event loop
                print(f"direct {tool}", file=sys.stderr)
                tools[tool]["direct"] = await direct_calls(tool, args.iterations, args.warmup)
            stack.fakes.script("openai", "bench-plain", answer="tool results: bench")
            plain = {"model": "openai/bench-plain",
                     "messages": [{"role": "user", "content": "use the tools"}]}  # fmt: skip
            no_call = tool_request("openai/bench-plain")
            print("model only, loop with no call", file=sys.stderr)
            results["requests"] = {
                "model_only": await request_phase(
                    stack, probe, plain, args.iterations, args.warmup
                ),
                "loop_no_call": await request_phase(
                    stack, probe, no_call, args.no_call_iterations, args.warmup
                ),
            }
            for tool in args.tools:
                print(f"loop {tool}", file=sys.stderr)
                loop = await loop_phase(stack, probe, tool, args.loop_iterations, args.warmup)
                tools[tool]["loop"] = loop
                tools[tool]["overhead"] = tr.overheads(
                    loop, tools[tool]["direct"], results["requests"]
                )
            results["sweep"] = {}
            for level in args.concurrency:
                print(f"{level} loops in flight", file=sys.stderr)
                results["sweep"][str(level)] = await sweep_level(
                    stack, probe, level, max(args.sweep_requests, level)
                )


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options (`--quick` sets smaller defaults; explicit options win)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK}")
    p.add_argument(
        "--iterations",
        type=int,
        default=200,
        help="measured direct calls per tool, and model-only requests",
    )
    p.add_argument(
        "--loop-iterations", type=int, default=100, help="measured loop requests per tool"
    )
    p.add_argument(
        "--no-call-iterations",
        type=int,
        default=40,
        help="measured loop requests whose model calls no tool",
    )
    p.add_argument("--warmup", type=int, default=10, help="unmeasured ones before each phase")
    p.add_argument(
        "--tools",
        type=lambda t: [x for x in t.split(",") if x],
        default=list(TOOLS),
        help=f"comma-separated, of {sorted(TOOLS)}",
    )
    p.add_argument(
        "--concurrency",
        type=lambda t: [int(x) for x in t.split(",") if x],
        default=[10, 50],
        help="loops in flight in the sweep (empty: no sweep)",
    )
    p.add_argument("--sweep-requests", type=int, default=150, help="loop requests per level")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the JSON report (default .bench/tool-loop-bench-<UTC time>.json)",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="abort the bench after, s")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    if unknown := set(args.tools) - set(TOOLS):
        p.error(f"unknown tools: {sorted(unknown)}")
    return args  # fmt: skip


def main() -> None:
    """Run the bench; print and write the report (exit 0 even when a phase failed)."""
    args = parse_args(sys.argv[1:])
    logging.basicConfig(level=logging.ERROR)
    command = shlex.join([sys.executable, "-m", "tests.bench.tool_loop_bench", *sys.argv[1:]])
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_path = args.out or ROOT / ".bench" / f"tool-loop-bench-{stamp}.json"
    results: dict[str, Any] = {"command": command, "args": vars(args), "started": stamp,
                               "machine_before": machine()}  # fmt: skip
    local_kafka = None
    started = time.monotonic()
    try:
        bootstrap, local_kafka = kafka_bootstrap()
        asyncio.run(asyncio.wait_for(bench(args, bootstrap, results), args.timeout))
    except (Exception, KeyboardInterrupt) as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
        print(f"bench aborted: {results['error']}", file=sys.stderr)
    finally:
        if local_kafka is not None:
            with contextlib.suppress(Exception):
                local_kafka.stop()
    results["wall_s"] = time.monotonic() - started
    results["machine_after"] = machine()
    report(results, tr.rows(results))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"report written to {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
