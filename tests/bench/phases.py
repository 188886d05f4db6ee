"""The measured phases. Each returns a flat dict of figures (the `BENCH_JSON` keys).

See the module docstring of `tests.bench.llm_bench` and docs/benchmarks.md for what each
phase does and how to read its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import time
from collections.abc import Callable
from typing import Any

import psutil

from tests.bench import bare
from tests.bench.bare import paced, pct
from tests.bench.procs import Fake, connection_stats, peak_rss_mb, spawn
from tests.bench.session import Req, WorkerSession


async def burst(s: WorkerSession, args: argparse.Namespace) -> dict[str, Any]:
    """Phase A: `--burst` requests published at once against slow streams, so they overlap."""
    await asyncio.to_thread(s.fake.scenario, args.burst_tokens, args.ttft, args.burst_token_rate)
    await asyncio.to_thread(s.fake.reset_stats)
    items, t0 = s.encode(args.burst), time.monotonic()
    futures = [(await s.send(item))[1] for item in items]
    await asyncio.wait_for(asyncio.gather(*futures), 30)
    stream_s = args.ttft + max(args.burst_tokens - 1, 0) / args.burst_token_rate
    await s.wait_terminal(args.burst, stream_s + 90)
    status, fake = await s.health(), await asyncio.to_thread(s.fake.stats)
    sent = [s.reader.reqs[item[0]] for item in items]
    return {"stream_s": round(stream_s, 3), "wall_s": round(time.monotonic() - t0, 3),
            "completed": sum(r.done is not None and not r.failed for r in sent),
            "failed": sum(r.failed for r in sent),
            "peak_in_flight": status.get("consumer", {}).get("peak_in_flight"),
            "fake_peak_streams": fake.get("peak_streams")}  # fmt: skip


async def at_rate(
    s: WorkerSession, args: argparse.Namespace, rate: float, requests: int, warmup: int
) -> dict[str, Any]:
    """Phase B (and each rate of the sweep): `requests` published at `rate` req/s after
    `warmup` unmeasured ones at the same rate (a fresh JVM broker compiles its hot paths
    under load; that would otherwise be charged to Ferryman)."""
    await asyncio.to_thread(s.fake.scenario, args.tokens, args.ttft, args.token_rate)
    if warmup:
        warm, base = s.encode(warmup), s.reader.terminal

        async def fire_warm(i: int) -> None:
            await s.send(warm[i])

        await paced(warmup, rate, fire_warm)
        await s.wait_terminal(base + warmup, 60)
    items, sent, futures = s.encode(requests), list[Req](), list[asyncio.Future[Any]]()

    async def fire(i: int) -> None:
        req, future = await s.send(items[i])
        sent.append(req)
        futures.append(future)

    await asyncio.to_thread(s.fake.reset_stats)
    fproc = psutil.Process(s.fake.pid)
    base, cpu0, fake0 = s.reader.terminal, s.cpu(), sum(fproc.cpu_times()[:2])
    own0 = time.process_time()
    psutil.cpu_percent()
    await paced(requests, rate, fire)
    await s.wait_terminal(base + requests, 60)
    cpu, own, host = s.cpu() - cpu0, time.process_time() - own0, psutil.cpu_percent()
    fake_cpu = sum(fproc.cpu_times()[:2]) - fake0
    upstream = connection_stats(await asyncio.to_thread(s.fake.stats))
    await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 10)
    added = [(r.first - r.sent - args.ttft) * 1000 for r in sent if r.first is not None]
    ends = [r.done for r in sent if r.done is not None]
    completed = sum(r.done is not None and not r.failed for r in sent)
    span = max(ends) - sent[0].sent if ends else math.nan
    return {"rate": rate, "requests": requests, "completed": completed,
            "failed": sum(r.failed for r in sent),
            **{f"added_ms_p{q}": pct(added, q) for q in (50, 95, 99, 100)},
            "completed_per_s": completed / span, "host_cpu_busy_pct": host,
            "worker_cpu_s_per_1k": cpu / requests * 1000,
            "worker_peak_rss_mb": peak_rss_mb(s.process.pid) if s.process else None,
            "chunk_events_per_request": sum(r.chunks for r in sent) / max(len(sent), 1),
            "bench_client_cpu_pct": own / span * 100,
            "fake_server_cpu_pct": fake_cpu / span * 100, **upstream}  # fmt: skip


async def streams(s: WorkerSession, args: argparse.Namespace) -> dict[str, Any]:
    """Phase S: `--streams` requests published at once against long, sparse streams; how
    many the worker holds, how many reach the fake at once, and the worker's RSS per stream."""
    await asyncio.to_thread(
        s.fake.scenario, args.streams_tokens, args.ttft, args.streams_token_rate
    )
    idle_rss = s.rss_mb()
    items = s.encode(args.streams)
    await asyncio.to_thread(s.fake.reset_stats)
    t0 = time.monotonic()
    futures = [(await s.send(item))[1] for item in items]
    await asyncio.wait_for(asyncio.gather(*futures), 120)
    published = time.monotonic() - t0
    stream_s = args.ttft + max(args.streams_tokens - 1, 0) / args.streams_token_rate
    # Generous: a worker capped below --streams serves them in waves.
    await s.wait_terminal(args.streams, stream_s * 8 + 120)
    status, fake = await s.health(), await asyncio.to_thread(s.fake.stats)
    peak_rss = peak_rss_mb(s.process.pid) if s.process else None
    consumer = status.get("consumer", {})
    peak = consumer.get("peak_in_flight")
    sent = [s.reader.reqs[item[0]] for item in items]
    per_stream = (peak_rss - idle_rss) * 1024 / peak if peak and peak_rss is not None else None
    return {"streams": args.streams, "stream_s": round(stream_s, 3),
            "publish_s": round(published, 3), "wall_s": round(time.monotonic() - t0, 3),
            "completed": sum(r.done is not None and not r.failed for r in sent),
            "failed": sum(r.failed for r in sent),
            "unfinished": sum(r.done is None for r in sent),
            "worker_max_in_flight": consumer.get("max_in_flight"),
            "worker_peak_in_flight": peak, "fake_peak_streams": fake.get("peak_streams"),
            "worker_idle_rss_mb": idle_rss, "worker_peak_rss_mb": peak_rss,
            "worker_rss_kb_per_stream": per_stream,
            **connection_stats(fake)}  # fmt: skip


async def bare_at_rate(
    fake: Fake, args: argparse.Namespace, rate: float, requests: int,
    worker_cpu: Callable[[], float] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Phase C (and the sweep's bare column): the bare SDK loop in its own process.

    With `worker_cpu`, also what an idle worker burns meanwhile (`worker_idle_cpu_pct`).

    Raises:
        RuntimeError: the bare loop printed no result.
    """
    await asyncio.to_thread(fake.scenario, args.tokens, args.ttft, args.token_rate)
    cmd = bare.command(f"{fake.url}/v1", requests, rate, args.ttft, args.warmup)
    # The window starts before the unmeasured warm-up calls: the bare client opens its
    # connections there and reuses them in the measured part.
    await asyncio.to_thread(fake.reset_stats)
    cpu0, t0 = worker_cpu() if worker_cpu else 0.0, time.monotonic()
    child = spawn(cmd, stdout=subprocess.PIPE)
    out, _ = await asyncio.to_thread(child.communicate, None, requests / rate + 90)
    lines = out.decode().strip().splitlines()
    if not lines:
        raise RuntimeError(f"the bare SDK loop at {rate} req/s printed nothing")
    result: dict[str, Any] = {"rate": rate, "requests": requests, **json.loads(lines[-1])}
    if worker_cpu is not None:
        result["worker_idle_cpu_pct"] = (worker_cpu() - cpu0) / (time.monotonic() - t0) * 100
    result["cpu_s_per_1k"] = result["cpu_s"] / requests * 1000
    result.update(connection_stats(await asyncio.to_thread(fake.stats)))
    return result
