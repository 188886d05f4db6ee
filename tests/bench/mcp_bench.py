"""Benchmark of the mcp_worker through a real Kafka broker against the in-repo MCP toolbox,
compared with the bare MCP SDK calling the same server directly.

`uv run --frozen python -m tests.bench.mcp_bench [--quick]` (what `make bench-mcp` runs).
For each of `--transports` (streamable HTTP: the toolbox as its own process, `http_toolbox`;
stdio: the toolbox as a child of whoever calls it), processes are separate so CPU is
charged to the right one: the worker (`python -m mcp_worker`, fresh topics
`bench-<tag>.mcp.*`), the bare loop (`tests.bench.mcp_bare`), the toolbox and the bench.
Kafka is `KAFKA_BOOTSTRAP_SERVERS` if set, else the local broker of
`tools/kafka/local_kafka.py` (stopped at the end only if this run started it).

Phase B "worker": at each of `--rates` calls/s, `--warmup-seconds` of unmeasured `echo`
calls, then `--seconds` of measured ones, published open loop (t0 + i/rate, never waiting
for replies) with progress events off; per call, publish to terminal reply as seen by the
bench's own reader; the worker's own CPU (psutil, user + system, first publish to last
reply) per call.

Phase A "bare": while the worker idles, the same `echo` calls at the same rates through
`mcp.Client` in its own process: latency per call and `time.process_time()` per call.
Added latency = worker p50/p99 - bare p50/p99 (targets ≤ 5 / ≤ 25 ms at 100 calls/s);
CPU ratio = worker CPU per call / bare CPU per call (target ≤ 1.5).

Phase C "in flight": a fresh worker (`MCP_WORKER_MAX_IN_FLIGHT` = `--max-in-flight`, the
server's `max_concurrency` = `--max-concurrency`) is sent `--burst` calls of
`slow(--burst-seconds, steps=1)` at once: completions, replies within the call's duration
+ `--slack`, the peak in flight (the worker's `/health`, the bench's view, and for HTTP
the worker's connections to the server), wall time and the worker's RSS before, at peak
and after. Then the bare SDK does the same burst, for reference.

Prints a table and one `BENCH_JSON {...}` line, writes the JSON to `--out` (default
`.bench/mcp-bench-<UTC time>.json`), and exits 0 even when targets are missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil

from tests.bench import mcp_phases
from tests.bench.mcp_session import McpWorkerSession, Toolbox
from tests.bench.procs import ROOT, cleanup, kafka_bootstrap, raise_fd_limit
from tests.bench.report import Check, Row, rate_key, report
from tests.mcp_servers import http_toolbox

QUICK = {"seconds": 3.0, "warmup_seconds": 1.0, "bare_warmup": 5, "burst": 300}
LATENCY_TARGET_RATE = 100.0


@contextlib.asynccontextmanager
async def toolbox_for(transport: str) -> AsyncIterator[Toolbox]:
    """The toolbox over `transport`: an HTTP server process for the run, or stdio (each
    client starts its own)."""
    if transport == "stdio":
        yield Toolbox("stdio")
        return
    async with http_toolbox("http") as url:
        yield Toolbox("http", url)


def session(bootstrap: str, toolbox: Toolbox, args: argparse.Namespace) -> McpWorkerSession:
    return McpWorkerSession(
        bootstrap,
        toolbox,
        max_in_flight=args.max_in_flight,
        max_concurrency=args.max_concurrency,
        partitions=args.partitions,
        log_level=args.worker_log_level,
    )


def merge_bare(out: dict[str, Any], bare: dict[str, Any]) -> None:
    """Put the bare loop's figures next to the worker's at each rate, with the added latency
    and the CPU ratio."""
    for key, worker in out.get("rates", {}).items():
        loop = bare.get(key, {})
        entry = {
            **worker,
            **{f"bare_{k}": v for k, v in loop.items() if k not in ("rate", "calls")},
        }
        for q in (50, 95, 99):
            mine, floor = worker.get(f"latency_ms_p{q}"), loop.get(f"latency_ms_p{q}")
            if mine is not None and floor is not None:
                entry[f"added_ms_p{q}"] = mine - floor
        if worker.get("worker_cpu_ms_per_call") is not None and loop.get("cpu_ms_per_call"):
            entry["cpu_ratio_worker_over_bare"] = (
                worker["worker_cpu_ms_per_call"] / loop["cpu_ms_per_call"]
            )
        out["rates"][key] = entry


async def measure_transport(
    transport: str, bootstrap: str, args: argparse.Namespace, out: dict[str, Any]
) -> None:
    """Phases B, A and C over one transport, into `out`."""
    async with toolbox_for(transport) as toolbox:
        port = int(toolbox.url.split(":")[2].split("/")[0]) if toolbox.url else None
        bare: dict[str, Any] = {}
        out["rates"] = {}
        try:
            async with session(bootstrap, toolbox, args) as s:
                out["worker_log"] = str(s.log)
                for rate in args.rates:
                    calls, warmup = round(rate * args.seconds), round(rate * args.warmup_seconds)
                    print(f"[{transport}] worker at {rate:g} calls/s", file=sys.stderr)
                    out["rates"][rate_key(rate)] = await mcp_phases.at_rate(s, rate, calls, warmup)
                for rate in args.rates:  # the worker idles meanwhile
                    print(f"[{transport}] bare SDK at {rate:g} calls/s", file=sys.stderr)
                    bare[rate_key(rate)] = await mcp_phases.bare_at_rate(
                        toolbox, rate, round(rate * args.seconds), args.bare_warmup, s.cpu
                    )
        finally:
            merge_bare(out, bare)
        if args.burst:
            print(f"[{transport}] {args.burst} calls in flight", file=sys.stderr)
            async with session(bootstrap, toolbox, args) as s:
                out["in_flight_log"] = str(s.log)
                out["in_flight"] = await mcp_phases.in_flight(
                    s, args.burst, args.burst_seconds, port, args.slack
                )
            if args.bare_burst:
                print(f"[{transport}] bare SDK: {args.burst} calls at once", file=sys.stderr)
                out["bare_burst"] = await mcp_phases.bare_burst(
                    toolbox, args.burst, args.burst_seconds
                )
                if toolbox.url is not None:  # with the pool the worker's client has
                    out["bare_burst_pooled"] = await mcp_phases.bare_burst(
                        toolbox, args.burst, args.burst_seconds, args.max_concurrency + 8
                    )


async def bench(args: argparse.Namespace, bootstrap: str, results: dict[str, Any]) -> None:
    results["transports"] = {}
    for transport in args.transports:
        out: dict[str, Any] = {}
        results["transports"][transport] = out
        try:
            await measure_transport(transport, bootstrap, args, out)
        except Exception as exc:  # the other transport's figures still stand
            out["error"] = f"{type(exc).__name__}: {exc}"
            print(f"{transport} aborted: {out['error']}", file=sys.stderr)


def rows(results: dict[str, Any]) -> list[Row]:
    """The table's rows: per transport, each rate, then the in-flight phase."""
    args = results.get("args", {})
    burst = args.get("burst") or 0
    table: list[Row] = []
    ratio: Check = lambda v: v <= 1.5  # noqa: E731
    for transport in results.get("transports", {}):
        at = ("transports", transport)
        for rate in args.get("rates", []):
            key, here = rate_key(rate), (*at, "rates", rate_key(rate))
            judged = rate == LATENCY_TARGET_RATE
            p50: Check | None = (lambda v: v <= 5) if judged else None
            p99: Check | None = (lambda v: v <= 25) if judged else None
            name = f"{transport} {key}/s"
            table += [
                (f"{name} added p50 (ms)", here, "added_ms_p50", "≤ 5" if judged else "", p50),
                (f"{name} added p99 (ms)", here, "added_ms_p99", "≤ 25" if judged else "", p99),
                (f"{name} worker p50 / p99 (ms)", here, "latency_ms_p50/latency_ms_p99", "", None),
                (f"{name} bare p50 / p99 (ms)", here, "bare_latency_ms_p50/bare_latency_ms_p99",
                 "", None),
                (f"{name} CPU ms/call worker / bare", here,
                 "worker_cpu_ms_per_call/bare_cpu_ms_per_call", "", None),
                (f"{name} CPU ratio worker / bare", here, "cpu_ratio_worker_over_bare", "≤ 1.5",
                 ratio),
                (f"{name} done / failed / unfinished", here, "completed/failed/unfinished", "",
                 None),
                (f"{name} host CPU busy (%)", here, "host_cpu_busy_pct", "", None),
            ]  # fmt: skip
        c = (*at, "in_flight")
        reach: Check = lambda v, n=burst: v >= n  # noqa: E731 - binds n per run
        table += [
            (f"{transport} C done / failed / unfinished", c, "completed/failed/unfinished", "",
             None),
            (f"{transport} C replies on time", c, "replies_on_time", f"≥ {burst}", reach),
            (f"{transport} C worker peak in flight", c, "worker_peak_in_flight", f"≥ {burst}",
             reach),
            (f"{transport} C bench-seen peak in flight", c, "client_peak_in_flight", "", None),
            (f"{transport} C server peak connections", c, "server_peak_connections", "", None),
            (f"{transport} C latency p50 / p100 (ms)", c, "latency_ms_p50/latency_ms_p100", "",
             None),
            (f"{transport} C publish / wall (s)", c, "publish_s/wall_s", "", None),
            (f"{transport} C RSS before/peak/after MB", c,
             "worker_rss_before_mb/worker_rss_peak_mb/worker_rss_after_mb", "", None),
            (f"{transport} C RSS KB per call", c, "worker_rss_kb_per_call", "", None),
            (f"{transport} C bare SDK done / wall (s)", (*at, "bare_burst"), "completed/wall_s",
             "", None),
            (f"{transport} C bare, big pool done / wall", (*at, "bare_burst_pooled"),
             "completed/wall_s", "", None),
        ]  # fmt: skip
    return table


def rates(text: str) -> list[float]:
    return [float(r) for r in text.split(",") if r.strip()]


def names(text: str) -> list[str]:
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    if unknown := set(chosen) - {"http", "stdio"}:
        raise argparse.ArgumentTypeError(f"unknown transports: {sorted(unknown)}")
    return chosen


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a small smoke run; sets these defaults (explicit options win): {QUICK}",
    )
    p.add_argument(
        "--transports",
        type=names,
        default=["http", "stdio"],
        help="comma-separated: http (streamable HTTP), stdio (default both)",
    )
    p.add_argument(
        "--rates",
        type=rates,
        default=[10.0, 50.0, 100.0],
        help="comma-separated calls/s of phases A and B (default 10,50,100; empty: skip)",
    )
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per rate")
    p.add_argument(
        "--warmup-seconds",
        type=float,
        default=5.0,
        help="unmeasured seconds of worker calls before each rate",
    )
    p.add_argument(
        "--bare-warmup",
        type=int,
        default=20,
        help="unmeasured concurrent bare SDK calls before each rate",
    )
    p.add_argument(
        "--burst",
        type=int,
        default=1000,
        help="slow calls published at once in phase C (0: skip phase C)",
    )
    p.add_argument("--burst-seconds", type=float, default=2.0, help="slow's duration (C)")
    p.add_argument(
        "--slack",
        type=float,
        default=1.0,
        help="a C reply is on time within --burst-seconds + this",
    )
    p.add_argument(
        "--no-bare-burst",
        dest="bare_burst",
        action="store_false",
        help="skip the bare SDK's burst after phase C",
    )
    p.add_argument("--max-in-flight", type=int, default=2000, help="MCP_WORKER_MAX_IN_FLIGHT")
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=2000,
        help="the toolbox's max_concurrency in the registry",
    )
    p.add_argument("--partitions", type=int, default=6, help="MCP_WORKER_TOPIC_PARTITIONS")
    p.add_argument(
        "--worker-log-level",
        default="WARNING",
        help="MCP_WORKER_LOG_LEVEL (DEBUG shows why a server session ended)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the JSON report (default .bench/mcp-bench-<UTC time>.json)",
    )
    p.add_argument("--timeout", type=float, default=2400.0, help="abort the bench after, s")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    return args  # fmt: skip


def machine() -> dict[str, Any]:
    """What the figures were measured on (the host is shared: read them with the load)."""
    return {"cpus": psutil.cpu_count(), "load_avg": os.getloadavg(),
            "memory_mb": psutil.virtual_memory().total // 2**20}  # fmt: skip


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    args = parse_args(sys.argv[1:])
    signal.signal(signal.SIGTERM, _interrupt)
    raise_fd_limit()
    command = shlex.join([sys.executable, "-m", "tests.bench.mcp_bench", *sys.argv[1:]])
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_path = args.out or ROOT / ".bench" / f"mcp-bench-{stamp}.json"
    results: dict[str, Any] = {"command": command, "args": vars(args), "started": stamp,
                               "machine_before": machine()}  # fmt: skip
    local_kafka = None
    try:
        bootstrap, local_kafka = kafka_bootstrap()
        results["bootstrap"] = bootstrap
        asyncio.run(asyncio.wait_for(bench(args, bootstrap, results), args.timeout))
    except (Exception, KeyboardInterrupt) as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
        print(f"bench aborted: {results['error']}", file=sys.stderr)
    finally:
        cleanup()
        if local_kafka is not None:
            with contextlib.suppress(Exception):
                local_kafka.stop()
    results["machine_after"] = machine()
    report(results, rows(results))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"report written to {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
