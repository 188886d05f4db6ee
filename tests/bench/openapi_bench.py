"""What serving an OpenAPI-described HTTP API as a tool costs per call: the same operations of
the inventory API called directly with `httpx2`, through `ApiCaller` in-process, and as a tool
through Kafka and a running mcp_worker.

`uv run --frozen python -m tests.bench.openapi_bench [--quick]` (what `make bench-openapi`
runs). Processes are separate, as in `make bench-mcp`: the inventory API
(`python -m tests.fakes.openapi_api`, seeded through `createItem` to `--items` items), the
worker (`python -m mcp_worker`, fresh topics `bench-<tag>.mcp.*`, a registry with one
`type: openapi` entry on `tests/fakes/openapi/api-v1.json`), and this bench, on uvloop like the
worker. Kafka is `KAFKA_BOOTSTRAP_SERVERS` if set, else the local broker of
`tools/kafka/local_kafka.py` (stopped at the end only if this run started it).

Per tool (`getItem`: one item, about 100 bytes of JSON; `listItems` with `limit=100`: the
list, about 13 KB), `--iterations` sequential calls after `--warmup` unmeasured ones, each
timed from the call's start until its decoded result is in hand:

1. direct: `httpx2.AsyncClient().get(url)` and `.json()` (the baseline).
2. caller, validation off / warn: `ApiCaller.call` in-process, built as the worker builds it
   (`backend.load_backend(...).caller("")`, cache off): arguments validated, request built,
   auth, bounded body, result; `warn` also checks the response with openapi-core.
3. worker: a tool call published to the worker's request topic until its `completed` event
   is read from the reply topic (cache off, `output_validation` `--worker-validation`).
   Then `--concurrent-requests` calls with `--concurrency` in flight (also direct and
   caller-warn, for reference): throughput and latency.
4. cached: a second worker whose entry caches (`cache: auto`, i.e. the API's own headers):
   `getCached` (`ETag`, `max-age=60`) answered by the HTTP cache from the second call on
   (the API's count of its requests over all the calls, warm-up included, is 1), against
   `getCached` fetched directly; and `getItem` through that caching client (the API sends
   no cache headers: every call still reaches it, counted the same way).

Overhead = mode - direct, percentile by percentile. CPU per call: this process's
`time.process_time()` for direct and caller, the worker process's user + system time for the
worker. Worker RSS after start, after the phases, and its peak (VmHWM).

Prints a table and one `BENCH_JSON {...}` line, writes the JSON to `--out` (default
`.bench/openapi-bench-<UTC time>.json`), and exits 0 even when a phase failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import select
import shlex
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import uvloop

from mcp_worker.openapi.backend import ApiBackend, ApiLimits, load_backend
from mcp_worker.openapi.caller import ApiCaller
from mcp_worker.registry import ServerConfig
from tests.bench import tool_loop_report as tr
from tests.bench.mcp_bench import machine
from tests.bench.mcp_session import McpWorkerSession, Toolbox
from tests.bench.openapi_report import rows, with_overhead
from tests.bench.procs import ROOT, cleanup, kafka_bootstrap, peak_rss_mb, spawn
from tests.bench.report import report
from tests.bench.session import Item, Req
from tests.fakes.openapi_api import DOCUMENTS

QUICK = {"iterations": 60, "warmup": 5, "concurrent_requests": 64}
SPEC = DOCUMENTS / "api-v1.json"
TOOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "getItem": ("/items/1", {"itemId": "1"}),
    "listItems": ("/items?limit=100", {"limit": 100}),
}
CACHED = ("getCached", "/cached", {})
TIMEOUT = 30.0
Call = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class ApiEntry(Toolbox):
    """The inventory API as the worker's one registry entry (named `toolbox` by the
    session)."""

    cache: str = "off"
    validation: str = "warn"

    def registry_entry(self, max_concurrency: int) -> dict[str, Any]:
        return {
            "type": "openapi",
            "spec": str(SPEC),
            "base_url": self.url,
            "max_concurrency": max_concurrency,
            "cache": {"mode": self.cache},
            "output_validation": self.validation,
        }


def start_api() -> str:
    """Start the inventory API as a process; its base URL.

    Raises:
        RuntimeError: it did not print its port within 30 s.
    """
    proc = spawn([sys.executable, "-m", "tests.fakes.openapi_api"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline().decode().strip() if ready else ""
    if not line.isdigit():
        raise RuntimeError(f"the inventory API did not print its port (got {line!r})")
    return f"http://127.0.0.1:{line}"


async def seed(client: httpx2.AsyncClient, base: str, items: int) -> int:
    """Create items until the API holds `items`; the bytes of `listItems?limit=100`."""
    have = len((await client.get(f"{base}/items?limit=100")).json())
    for i in range(have, items):
        body = {
            "name": f"bench item {i}",
            "price": 1.5 + i,
            "tags": ["bench", f"t{i % 7}"],
            "description": f"Item {i} created for the OpenAPI bench",
        }
        (await client.post(f"{base}/items", json=body)).raise_for_status()
    return len((await client.get(f"{base}/items?limit=100")).content)


async def api_requests(client: httpx2.AsyncClient, base: str, operation: str) -> int:
    """How many requests the API handled for `operation` so far."""
    recorded = (await client.get(f"{base}/_requests")).json()
    return sum(1 for r in recorded if r["operation"] == operation)


async def sequential(
    call: Call, iterations: int, warmup: int, cpu: Callable[[], float] = time.process_time
) -> dict[str, Any]:
    """Latency (ms) of `iterations` calls one at a time after `warmup`; CPU ms per call."""
    for i in range(warmup):
        await call(i)
    latencies: list[float] = []
    cpu_before = cpu()
    for i in range(warmup, warmup + iterations):
        started = time.perf_counter()
        await call(i)
        latencies.append((time.perf_counter() - started) * 1000)
    return {**tr.summary(latencies), "cpu_ms_per_call": (cpu() - cpu_before) * 1000 / iterations}


async def concurrent(
    call: Call, requests: int, level: int, cpu: Callable[[], float] = time.process_time
) -> dict[str, Any]:
    """`requests` calls with `level` in flight: calls/s, latency (ms), CPU ms per call."""
    gate = asyncio.Semaphore(level)
    latencies: list[float] = []
    failures: list[str] = []

    async def one(i: int) -> None:
        async with gate:
            started = time.perf_counter()
            try:
                await call(i)
                latencies.append((time.perf_counter() - started) * 1000)
            except Exception as exc:  # counted and reported, never hidden
                failures.append(f"{type(exc).__name__}: {exc}"[:300])

    cpu_before, started = cpu(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    wall = time.perf_counter() - started
    return {
        "in_flight": level,
        "completed": len(latencies),
        "failed": len(failures),
        "first_failure": failures[0] if failures else None,
        "wall_s": wall,
        "calls_per_s": len(latencies) / wall,
        "cpu_ms_per_call": (cpu() - cpu_before) * 1000 / requests,
        **tr.summary(latencies),
    }


def direct(client: httpx2.AsyncClient, url: str) -> Call:
    async def call(_i: int) -> None:
        response = await client.get(url)
        response.raise_for_status()
        response.json()

    return call


def via_caller(caller: ApiCaller, tool: str, arguments: dict[str, Any]) -> Call:
    async def call(_i: int) -> None:
        result = await caller.call(tool, arguments, TIMEOUT)
        if result.is_error:
            raise RuntimeError(f"{tool} answered HTTP {result.status}")

    return call


class WatchedReq(Req):
    """A call's stamps, with an event set when the reply reader stamps its terminal event."""

    def __init__(self, sent: float) -> None:
        self.finished = asyncio.Event()
        super().__init__(sent=sent)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "done" and value is not None:
            self.finished.set()


def via_worker(session: McpWorkerSession, items: list[Item]) -> Call:
    """Call `i` publishes `items[i]` (encoded before the phase) and waits for its reply."""

    async def call(i: int) -> None:
        rid, value, headers = items[i]
        session.reader.reqs[rid] = req = WatchedReq(time.monotonic())
        await session.publisher.send(session.req_topic, value, key=rid.encode(), headers=headers)
        await asyncio.wait_for(req.finished.wait(), TIMEOUT)
        if req.failed:
            raise RuntimeError(f"the call failed: {dict(session.reader.failures)}")

    return call


async def caller_for(base: str, validation: str) -> ApiBackend:
    """The API loaded as the worker loads its entry (cache off, `validation` of responses)."""
    entry = ApiEntry("openapi", base, cache="off", validation=validation)
    config = ServerConfig.model_validate(entry.registry_entry(16))
    return await load_backend("inventory", config, base_dir=ROOT, limits=ApiLimits(), environ={})


def worker_session(
    base: str, bootstrap: str, args: argparse.Namespace, cache: str
) -> McpWorkerSession:
    entry = ApiEntry("openapi", base, cache=cache, validation=args.worker_validation)
    return McpWorkerSession(
        bootstrap,
        entry,
        max_in_flight=256,
        max_concurrency=max(args.concurrency, 16),
        partitions=args.partitions,
    )


def worker_figures(s: McpWorkerSession) -> dict[str, Any]:
    assert s.proc is not None
    return {
        "rss_mb": s.rss_mb(),
        "peak_rss_mb": peak_rss_mb(s.proc.pid),
        "tool_errors": s.reader.tool_errors,
        "failures": dict(s.reader.failures),
        "log": str(s.log),
    }


async def in_process(
    client: httpx2.AsyncClient, base: str, args: argparse.Namespace, results: dict[str, Any]
) -> None:
    """Direct and caller modes, sequential and concurrent (no worker running)."""
    n, w, level, many = args.iterations, args.warmup, args.concurrency, args.concurrent_requests
    backends = {v: await caller_for(base, v) for v in ("off", "warn")}
    try:
        for tool, (path, arguments) in TOOLS.items():
            print(f"{tool}: direct, caller", file=sys.stderr)
            modes, flight = results["tools"][tool], results["concurrent"][tool]
            modes["direct"] = await sequential(direct(client, base + path), n, w)
            for v, backend in backends.items():
                call = via_caller(backend.caller(""), tool, arguments)
                modes[f"caller_{v}"] = await sequential(call, n, w)
            flight["direct"] = await concurrent(direct(client, base + path), many, level)
            call = via_caller(backends["warn"].caller(""), tool, arguments)
            flight["caller_warn"] = await concurrent(call, many, level)
    finally:
        for backend in backends.values():
            await backend.close()


async def bench(args: argparse.Namespace, bootstrap: str, results: dict[str, Any]) -> None:
    """Every phase, into `results`."""
    n, w, level, many = args.iterations, args.warmup, args.concurrency, args.concurrent_requests
    base = start_api()
    tools: dict[str, dict[str, Any]] = {t: {} for t in TOOLS}
    results["tools"], results["concurrent"] = tools, {t: {} for t in TOOLS}
    async with httpx2.AsyncClient() as client:
        results["list_bytes"] = await seed(client, base, args.items)
        await in_process(client, base, args, results)
        async with worker_session(base, bootstrap, args, "off") as s:
            results["worker"] = {"rss_idle_mb": s.rss_mb()}
            for tool, (_path, arguments) in TOOLS.items():
                print(f"{tool}: worker", file=sys.stderr)
                items = s.encode(n + w, tool, arguments)
                tools[tool]["worker"] = await sequential(via_worker(s, items), n, w, s.cpu)
                items = s.encode(many, tool, arguments)
                results["concurrent"][tool]["worker"] = await concurrent(
                    via_worker(s, items), many, level, s.cpu
                )
            results["worker"].update(worker_figures(s))
        print("cache on: getCached, getItem", file=sys.stderr)
        operation, path, arguments = CACHED
        cached: dict[str, Any] = {"direct": await sequential(direct(client, base + path), n, w)}
        async with worker_session(base, bootstrap, args, "auto") as s:
            results["worker_cache_auto"] = {"rss_idle_mb": s.rss_mb()}
            items = s.encode(n + w, operation, arguments)
            before = await api_requests(client, base, operation)
            cached["worker_cached"] = await sequential(via_worker(s, items), n, w, s.cpu)
            cached["api_requests"] = await api_requests(client, base, operation) - before
            items = s.encode(n + w, "getItem", TOOLS["getItem"][1])
            before = await api_requests(client, base, "getItem")
            tools["getItem"]["worker_cache_auto"] = await sequential(
                via_worker(s, items), n, w, s.cpu
            )
            cached["getItem_api_requests"] = await api_requests(client, base, "getItem") - before
            results["worker_cache_auto"].update(worker_figures(s))
        results["cached"] = with_overhead(cached)
        for tool in TOOLS:
            tools[tool] = with_overhead(tools[tool])


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options (`--quick` sets smaller defaults; explicit options win)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK}")
    p.add_argument("--iterations", type=int, default=300, help="measured calls per mode and tool")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured calls before each")
    p.add_argument("--items", type=int, default=100, help="items the API holds (listItems)")
    p.add_argument("--concurrency", type=int, default=16, help="calls in flight, concurrent run")
    p.add_argument("--concurrent-requests", type=int, default=400, help="calls per concurrent run")
    p.add_argument(
        "--worker-validation",
        choices=("off", "warn", "strict"),
        default="warn",
        help="the worker entry's output_validation",
    )
    p.add_argument("--partitions", type=int, default=6, help="MCP_WORKER_TOPIC_PARTITIONS")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the JSON report (default .bench/openapi-bench-<UTC time>.json)",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="abort the bench after, s")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    if not 1 <= args.items <= 100:
        p.error("--items is from 1 to 100 (listItems returns at most 100)")
    return args


def main() -> None:
    """Run the bench; print and write the report (exit 0 even when a phase failed)."""
    args = parse_args(sys.argv[1:])
    command = shlex.join([sys.executable, "-m", "tests.bench.openapi_bench", *sys.argv[1:]])
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_path = args.out or ROOT / ".bench" / f"openapi-bench-{stamp}.json"
    results: dict[str, Any] = {
        "command": command,
        "args": vars(args),
        "started": stamp,
        "machine_before": machine(),
    }
    local_kafka = None
    started = time.monotonic()
    try:
        bootstrap, local_kafka = kafka_bootstrap()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(asyncio.wait_for(bench(args, bootstrap, results), args.timeout))
    except (Exception, KeyboardInterrupt) as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
        print(f"bench aborted: {results['error']}", file=sys.stderr)
    finally:
        cleanup()
        if local_kafka is not None:
            with contextlib.suppress(Exception):
                local_kafka.stop()
    results["wall_s"] = time.monotonic() - started
    results["machine_after"] = machine()
    report(results, rows(results))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"report written to {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
