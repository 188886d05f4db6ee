"""The MCP bench's measured phases. Each returns a flat dict of figures (`BENCH_JSON` keys).

See `tests.bench.mcp_bench` and docs/benchmarks.md ("MCP worker") for what each phase does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import subprocess
import time
from collections.abc import Callable
from typing import Any

import psutil

from tests.bench import mcp_bare
from tests.bench.bare import paced, pct
from tests.bench.mcp_session import McpWorkerSession, Toolbox
from tests.bench.procs import peak_rss_mb, spawn
from tests.bench.session import Req

ECHO = ("echo", {"text": "bench"})


def latencies(reqs: list[Req]) -> dict[str, float | None]:
    """Publish to terminal event seen, p50/p95/p99/p100 in ms."""
    taken = [(r.done - r.sent) * 1000 for r in reqs if r.done is not None]
    return {f"latency_ms_p{q}": pct(taken, q) for q in (50, 95, 99, 100)}


def outcome(s: McpWorkerSession, reqs: list[Req], errors0: int) -> dict[str, Any]:
    """Completed, failed and unfinished calls; tool errors since `errors0`; the session's
    failures by code and message so far."""
    return {"completed": sum(r.done is not None and not r.failed for r in reqs),
            "failed": sum(r.failed for r in reqs),
            "unfinished": sum(r.done is None for r in reqs),
            "tool_errors": s.reader.tool_errors - errors0,
            "failures_by_reason": dict(s.reader.failures)}  # fmt: skip


async def warm(s: McpWorkerSession, rate: float, calls: int) -> None:
    """`calls` unmeasured `echo` calls at `rate`, waited for."""
    if calls <= 0:
        return
    items, base = s.encode(calls, *ECHO), s.reader.terminal

    async def fire(i: int) -> None:
        await s.send(items[i])

    await paced(calls, rate, fire)
    await s.wait_terminal(base + calls, 60)


async def at_rate(s: McpWorkerSession, rate: float, calls: int, warmup: int) -> dict[str, Any]:
    """Phase B: `calls` `echo` calls published at `rate` calls/s (absolute pacing, open loop)
    after `warmup` unmeasured ones; the worker's CPU over first publish to last reply."""
    await warm(s, rate, warmup)
    items, sent, acks = s.encode(calls, *ECHO), list[Req](), list[asyncio.Future[Any]]()

    async def fire(i: int) -> None:
        req, ack = await s.send(items[i])
        sent.append(req)
        acks.append(ack)

    base, errors0, cpu0, own0 = (
        s.reader.terminal,
        s.reader.tool_errors,
        s.cpu(),
        time.process_time(),
    )
    psutil.cpu_percent()
    await paced(calls, rate, fire)
    await s.wait_terminal(base + calls, 60)
    cpu, own, host = s.cpu() - cpu0, time.process_time() - own0, psutil.cpu_percent()
    await asyncio.wait_for(asyncio.gather(*acks, return_exceptions=True), 10)
    ends = [r.done for r in sent if r.done is not None]
    span = max(ends) - sent[0].sent if ends else math.nan
    result = outcome(s, sent, errors0)
    return {"rate": rate, "calls": calls, **result, **latencies(sent),
            "completed_per_s": result["completed"] / span,
            "worker_cpu_ms_per_call": cpu / calls * 1000,
            "worker_peak_rss_mb": peak_rss_mb(s.proc.pid), "host_cpu_busy_pct": host,
            "bench_client_cpu_pct": own / span * 100}  # fmt: skip


def peak_overlap(reqs: list[Req]) -> int:
    """The most calls in flight at once as the bench saw them (publish to terminal reply)."""
    events = sorted([(r.sent, 1) for r in reqs] + [(r.done, -1) for r in reqs if r.done])
    peak = level = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


class Sampler:
    """Samples the worker's RSS (and its connections to an HTTP server's port) every
    `interval` seconds while running; keeps the peaks."""

    def __init__(self, s: McpWorkerSession, port: int | None, interval: float = 0.1) -> None:
        self.s, self.port, self.interval = s, port, interval
        self.peak_rss_mb = 0.0
        self.peak_connections: int | None = None if port is None else 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while self.s.alive:
            with contextlib.suppress(psutil.Error):
                self.peak_rss_mb = max(self.peak_rss_mb, self.s.rss_mb())
                if self.port is not None and self.peak_connections is not None:
                    now = await asyncio.to_thread(self.s.connections_to, self.port)
                    self.peak_connections = max(self.peak_connections, now)
            await asyncio.sleep(self.interval)

    def __enter__(self) -> Sampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def in_flight(
    s: McpWorkerSession, calls: int, seconds: float, port: int | None, slack: float
) -> dict[str, Any]:
    """Phase C: `calls` calls of `slow(seconds, steps=1)` published at once to a fresh
    worker; how many ran at once and what they cost in worker memory."""
    await warm(s, 10, 1)  # the session exists before the idle RSS is taken
    idle_rss = s.rss_mb()
    items = s.encode(calls, "slow", {"seconds": seconds, "steps": 1})
    base, errors0 = s.reader.terminal, s.reader.tool_errors
    with Sampler(s, port) as sampler:
        t0 = time.monotonic()
        sent = [(await s.send(item)) for item in items]
        await asyncio.wait_for(asyncio.gather(*(ack for _, ack in sent)), 120)
        published = time.monotonic() - t0
        await s.wait_terminal(base + calls, seconds * 20 + 120)
        ends = [r.done for r, _ in sent if r.done is not None]
        wall = (max(ends) if ends else time.monotonic()) - t0
    await asyncio.sleep(2)  # let the worker drop what the burst held before "after"
    status = await s.health()
    reqs = [r for r, _ in sent]
    result = outcome(s, reqs, errors0)
    on_time = sum(r.done is not None and not r.failed and r.done - r.sent <= seconds + slack
                  for r in reqs)  # fmt: skip
    peak_rss = max(sampler.peak_rss_mb, peak_rss_mb(s.proc.pid) or 0.0)
    peak = status.get("consumer", {}).get("peak_in_flight")
    return {"calls": calls, "seconds": seconds, **result, **latencies(reqs),
            "publish_s": published, "wall_s": wall, f"within_{seconds + slack:g}s": on_time,
            "replies_on_time": on_time, "client_peak_in_flight": peak_overlap(reqs),
            "effective_concurrency": result["completed"] * seconds / wall if wall else None,
            "worker_peak_in_flight": peak,
            "worker_max_in_flight": status.get("consumer", {}).get("max_in_flight"),
            "server_peak_connections": sampler.peak_connections,
            "worker_rss_before_mb": idle_rss, "worker_rss_peak_mb": peak_rss,
            "worker_rss_after_mb": s.rss_mb(),
            "worker_rss_kb_per_call": (peak_rss - idle_rss) * 1024 / calls}  # fmt: skip


async def run_bare(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run the bare loop's process and decode its JSON line.

    Raises:
        RuntimeError: it printed no result (its stderr is in the message).
    """
    child = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.to_thread(child.communicate, None, timeout)
    lines = out.decode().strip().splitlines()
    if not lines:
        raise RuntimeError(f"the bare MCP loop printed nothing: {err.decode()[-800:]}")
    return json.loads(lines[-1])


async def bare_at_rate(
    toolbox: Toolbox, rate: float, calls: int, warmup: int,
    worker_cpu: Callable[[], float] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Phase A: the bare SDK loop at `rate` in its own process. With `worker_cpu`, also what
    the idle worker burns meanwhile (`worker_idle_cpu_pct`)."""
    cpu0, t0 = worker_cpu() if worker_cpu else 0.0, time.monotonic()
    cmd = mcp_bare.command(toolbox.transport, toolbox.url, calls, rate=rate, warmup=warmup)
    result: dict[str, Any] = {"rate": rate, "calls": calls,
                              **await run_bare(cmd, calls / rate + 120)}  # fmt: skip
    result["cpu_ms_per_call"] = result["cpu_s"] / calls * 1000
    if worker_cpu is not None:
        result["worker_idle_cpu_pct"] = (worker_cpu() - cpu0) / (time.monotonic() - t0) * 100
    return result


async def bare_burst(toolbox: Toolbox, calls: int, seconds: float, pool: int = 0) -> dict[str, Any]:
    """The bare SDK with `calls` calls of `slow(seconds)` at once: the reference for C
    (`pool`: over HTTP, connections its client may hold; 0: the SDK's default client)."""
    cmd = mcp_bare.command(toolbox.transport, toolbox.url, calls, burst_seconds=seconds, pool=pool)
    return {"calls": calls, "pool": pool or None, **await run_bare(cmd, seconds * 20 + 180)}
