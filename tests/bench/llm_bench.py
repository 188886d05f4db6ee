"""Benchmark of the LLM worker through a real Kafka broker against a fake OpenAI server.

`uv run python -m tests.bench.llm_bench [options]` (what `make bench` runs; `--quick` for a
small smoke run). Processes: the fake OpenAI SSE server (`tests.fakes.openai_server`), the
worker (`python -m llm_worker`) and the bare-SDK loop (`tests.bench.bare`), each separate
so CPU is attributed to the right process. Kafka is `KAFKA_BOOTSTRAP_SERVERS` if set, else
the local broker of `tools/kafka/local_kafka.py` (stopped at the end only if this run
started it). docs/benchmarks.md explains every phase and figure.

Phase A "concurrency": `--burst` requests published at once against slow streams; the
worker's peak in-flight (target ≥ 500) and the fake's peak concurrent streams.

Phase B "rate": `--requests` at `--rate` req/s (absolute pacing, no drift) after
`--steady-warmup` unmeasured ones. Per request: publish, first chunk and terminal event as
seen by the bench's own reader of the reply topic. Added latency = first chunk - publish -
`--ttft`, p50/p95/p99 in ms (targets ≤ 5 / ≤ 25); completed req/s; worker CPU-seconds
per 1,000 requests; worker peak RSS; calls per upstream TCP connection (counted at the
fake); CPU % of the bench client, the fake and the host as diagnostics.

Phase C "bare SDK": the same requests at the same rate through `openai.AsyncOpenAI`
directly, in its own process: its CPU per request (worker / bare target ≤ 1.5), its own
added latency (the floor the fake and HTTP impose without Kafka) and calls per connection.

Sweep: phases B and C again at each of `--sweep-rates` (10, 50, 100 req/s; `--rate` reuses
B and C) for `--sweep-seconds` each: worker CPU per request and its ratio to the bare loop
at that rate, added latency p50/p99, calls per upstream connection, chunk events/request.

Phase S "streams": a fresh worker (max in flight `--streams-max-in-flight`, default
`--streams`) gets `--streams` (5,000) requests at once against long, sparse streams: the
worker's peak in flight, the fake's peak concurrent streams (what really reached the
upstream), the worker's RSS per stream ((peak - idle) / peak in flight).

`--baseline-ref REF` runs phases A, B, the sweep and S again with the worker of git
revision REF (a temporary worktree and venv; see `tests.bench.baseline`) and prints both
columns side by side. Prints a table and one `BENCH_JSON {...}` line; exits 0 even when
targets are missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal
import sys
from typing import Any

from tests.bench import phases
from tests.bench.baseline import baseline_worker
from tests.bench.procs import CURRENT, Fake, WorkerBuild, cleanup, kafka_bootstrap, raise_fd_limit
from tests.bench.report import rate_key, report
from tests.bench.session import WorkerSession

QUICK = {"burst": 20, "burst_tokens": 4, "burst_token_rate": 8.0, "tokens": 8,
         "requests": 100, "steady_warmup": 50, "warmup": 5, "sweep_seconds": 2.0,
         "sweep_warmup_seconds": 1.0, "streams": 200, "streams_tokens": 3,
         "streams_token_rate": 1.0}  # fmt: skip


def sweep_rates(args: argparse.Namespace) -> list[float]:
    """The rates measured besides `--rate` (which phases B and C already cover)."""
    return sorted({r for r in args.sweep_rates if r != args.rate})


def sweep_sizes(args: argparse.Namespace, rate: float) -> tuple[int, int]:
    """(measured, warm-up) requests at `rate`."""
    measured = max(1, round(rate * args.sweep_seconds))
    return measured, min(args.steady_warmup, round(rate * args.sweep_warmup_seconds))


async def measure_build(
    build: WorkerBuild, bootstrap: str, fake: Fake, args: argparse.Namespace,
    out: dict[str, Any], bare: dict[str, Any] | None,
) -> None:  # fmt: skip
    """Run every worker phase against `build`, into `out`. With `bare` (a dict), also run
    the bare SDK loop at each rate while the worker idles, into `bare` by rate key."""
    async with WorkerSession(build, bootstrap, fake, max_in_flight=args.max_in_flight,
                             partitions=args.partitions) as s:  # fmt: skip
        assert s.worker is not None
        out["worker_log"] = str(s.worker.log)
        out["A"] = await phases.burst(s, args)
        out["B"] = await phases.at_rate(s, args, args.rate, args.requests, args.steady_warmup)
        out["sweep"] = {rate_key(args.rate): out["B"]}
        for rate in sweep_rates(args):
            measured, warmup = sweep_sizes(args, rate)
            out["sweep"][rate_key(rate)] = await phases.at_rate(s, args, rate, measured, warmup)
        if bare is not None:  # the worker idles meanwhile
            bare[rate_key(args.rate)] = await phases.bare_at_rate(
                fake, args, args.rate, args.requests, s.cpu
            )
            for rate in sweep_rates(args):
                measured, _ = sweep_sizes(args, rate)
                bare[rate_key(rate)] = await phases.bare_at_rate(fake, args, rate, measured)
    if args.streams:
        async with WorkerSession(
            build,
            bootstrap,
            fake,
            partitions=args.partitions,
            max_in_flight=args.streams_max_in_flight or args.streams,
        ) as s:
            out["streams"] = await phases.streams(s, args)  # fmt: skip


def merge_bare(out: dict[str, Any], bare: dict[str, Any]) -> None:
    """Put the bare loop's figures next to the worker's at each rate, with the CPU ratio."""
    for key, worker in out.get("sweep", {}).items():
        loop = bare.get(key, {})
        entry = {**worker, **{f"bare_{k}": v for k, v in loop.items() if k != "rate"}}
        if worker.get("worker_cpu_s_per_1k") is not None and loop.get("cpu_s_per_1k"):
            entry["cpu_ratio_worker_over_bare"] = worker["worker_cpu_s_per_1k"] / loop[
                "cpu_s_per_1k"]  # fmt: skip
        out["sweep"][key] = entry
    at_rate = out.get("sweep", {}).get(rate_key(out["B"]["rate"])) if "B" in out else None
    if at_rate is not None and "cpu_ratio_worker_over_bare" in at_rate:
        out["cpu_ratio_worker_over_bare"] = at_rate["cpu_ratio_worker_over_bare"]


async def bench(args: argparse.Namespace, bootstrap: str, results: dict[str, Any]) -> None:
    fake, bare = Fake.start(), dict[str, Any]()
    try:
        await measure_build(CURRENT, bootstrap, fake, args, results, bare)
    finally:
        if "C" not in results and rate_key(args.rate) in bare:
            results["C"] = bare[rate_key(args.rate)]
        merge_bare(results, bare)
    if args.baseline_ref:
        baseline: dict[str, Any] = {"ref": args.baseline_ref}
        results["baseline"] = baseline
        try:
            with baseline_worker(args.baseline_ref) as (build, commit):
                baseline["commit"] = commit
                await measure_build(build, bootstrap, fake, args, baseline, None)
        except Exception as exc:  # the current worker's figures still stand
            baseline["error"] = f"{type(exc).__name__}: {exc}"
            print(f"baseline aborted: {baseline['error']}", file=sys.stderr)
        finally:
            merge_bare(baseline, bare)


def rates(text: str) -> list[float]:
    return [float(r) for r in text.split(",") if r.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a small smoke run; sets these defaults (explicit options win): {QUICK}",
    )
    p.add_argument("--ttft", type=float, default=0.05, help="fake time to first token, s")
    p.add_argument("--tokens", type=int, default=32, help="tokens per answer (B, C, sweep)")
    p.add_argument("--token-rate", type=float, default=200.0, help="fake tokens/s (B, C, sweep)")
    p.add_argument("--burst", type=int, default=600, help="requests published at once (A)")
    p.add_argument("--burst-tokens", type=int, default=32, help="tokens per answer (A)")
    p.add_argument("--burst-token-rate", type=float, default=12.0, help="fake tokens/s (A)")
    p.add_argument("--requests", type=int, default=1000, help="requests (B, C)")
    p.add_argument("--rate", type=float, default=100.0, help="requests/s (B, C)")
    p.add_argument(
        "--max-in-flight", type=int, default=1024, help="LLM_WORKER_MAX_IN_FLIGHT (A, B, sweep)"
    )
    p.add_argument("--partitions", type=int, default=6, help="LLM_WORKER_TOPIC_PARTITIONS")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured bare-SDK calls (C, sweep)")
    p.add_argument(
        "--steady-warmup",
        type=int,
        default=1000,
        help="unmeasured requests at --rate before phase B, so the broker's JIT, "
        "the worker and the client are in steady state (0: off); also caps "
        "each sweep rate's warm-up",
    )
    p.add_argument(
        "--sweep-rates",
        type=rates,
        default=[10.0, 50.0, 100.0],
        help="comma-separated req/s of the sweep (default 10,50,100)",
    )
    p.add_argument(
        "--sweep-seconds",
        type=float,
        default=20.0,
        help="measured seconds per sweep rate other than --rate",
    )
    p.add_argument(
        "--sweep-warmup-seconds",
        type=float,
        default=10.0,
        help="unmeasured seconds before each sweep rate",
    )
    p.add_argument(
        "--streams",
        type=int,
        default=5000,
        help="requests published at once in phase S (0: skip phase S)",
    )
    p.add_argument("--streams-tokens", type=int, default=8, help="tokens per answer (S)")
    p.add_argument("--streams-token-rate", type=float, default=0.5, help="fake tokens/s (S)")
    p.add_argument(
        "--streams-max-in-flight",
        type=int,
        default=0,
        help="LLM_WORKER_MAX_IN_FLIGHT of phase S's worker (0: --streams)",
    )
    p.add_argument(
        "--baseline-ref",
        default=None,
        help="also run the worker of this git revision (e.g. bf3a7e6), side by side",
    )
    p.add_argument("--timeout", type=float, default=2400.0, help="abort the bench after, s")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    return args  # fmt: skip


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    args = parse_args(sys.argv[1:])
    signal.signal(signal.SIGTERM, _interrupt)
    raise_fd_limit()
    command = shlex.join([sys.executable, "-m", "tests.bench.llm_bench", *sys.argv[1:]])
    results: dict[str, Any] = {"command": command, "args": vars(args)}
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
    report(results)


if __name__ == "__main__":
    main()
