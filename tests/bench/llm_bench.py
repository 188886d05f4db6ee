"""Benchmark of the LLM worker through a real Kafka broker against a fake OpenAI server.

`uv run python -m tests.bench.llm_bench [options]` (what `make bench` runs). Processes:
the fake OpenAI SSE server (`tests.fakes.openai_server`), ONE worker (`python -m
llm_worker`), and, for phase C, a bare-SDK subprocess; each is separate so CPU is
attributed to the right process. Kafka is `KAFKA_BOOTSTRAP_SERVERS` if set, else the local
broker of `tools/kafka/local_kafka.py` (stopped at the end only if this run started it).

Phase A "concurrency": `--burst` requests are published at once against a slow stream
(`--burst-tokens` at `--burst-token-rate`, so streams overlap) and the worker's
`/health` consumer.peak_in_flight is reported (target ≥ 500).

Phase B "rate": `--requests` are published at `--rate` req/s, paced by absolute clock
targets (no drift). The bench reads the reply topic itself (group_id=None, assigned and
pinned to its end before publishing). Per request: publish time (monotonic, taken just
before the producer enqueues it), first chunk seen, terminal event seen.
added latency = (first chunk seen - publish time) - `--ttft` (the fake's time to first
token); p50/p95/p99 in ms (targets ≤ 5 / ≤ 25). Also: completed req/s, worker CPU-seconds
per 1,000 requests (psutil user+system delta from first publish to last terminal event),
worker peak RSS (VmHWM).

Phase C "bare SDK baseline": a subprocess runs `openai.AsyncOpenAI(max_retries=0)` streaming
calls against the same fake, same count and rate; its CPU is `time.process_time()` over
the paced loop. Ratio worker/bare CPU per request (target ≤ 1.5).

Prints a table and one `BENCH_JSON {...}` line; exits 0 even when targets are missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib.util
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MODEL = "openai/gpt-bench"
MESSAGES = [{"role": "user", "content": "Say something for the benchmark."}]
PROCS: list[subprocess.Popen[bytes]] = []


def _die_with_parent() -> None:  # runs in the child before exec: SIGKILL it if we die
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(args, cwd=ROOT, preexec_fn=_die_with_parent, **kwargs)
    PROCS.append(proc)
    return proc


def cleanup() -> None:
    """Terminate every process this bench started, then kill stragglers."""
    for proc in PROCS:
        if proc.poll() is None:
            proc.terminate()
    for proc in PROCS:
        try:
            proc.wait(8)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def paced(count: int, rate: float, fire: Any) -> None:
    """Call `fire(i)` at t0 + i/rate (absolute targets: sleeps never accumulate drift)."""
    t0 = time.monotonic()
    for i in range(count):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await fire(i)


# --------------------------------------------------------------------- bare SDK child


async def bare_child(args: argparse.Namespace) -> None:
    import openai

    client = openai.AsyncOpenAI(base_url=args.base_url, api_key="bench", max_retries=0)
    firsts: list[float] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        start, first = time.monotonic(), None
        try:
            stream = await client.chat.completions.create(
                model=MODEL.split("/", 1)[1],
                messages=MESSAGES,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.monotonic()
        except Exception:
            errors += 1
            return
        if first is not None:
            firsts.append(first - start)

    await asyncio.gather(*(one() for _ in range(args.warmup)))
    firsts.clear()
    tasks: list[asyncio.Task[None]] = []

    async def fire(_i: int) -> None:
        tasks.append(asyncio.create_task(one()))

    cpu0, t0 = time.process_time(), time.monotonic()
    await paced(args.requests, args.rate, fire)
    await asyncio.wait_for(asyncio.gather(*tasks), args.requests / args.rate + 60)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    p50 = pct(firsts, 50)
    print(
        json.dumps(
            {
                "cpu_s": cpu,
                "wall_s": wall,
                "completed": len(firsts),
                "errors": errors,
                "ttft_p50_ms": None if p50 is None else p50 * 1000,
            }
        ),
        flush=True,
    )
    await client.close()


# --------------------------------------------------------------------- main bench


@dataclass
class Req:
    sent: float = 0.0
    first: float | None = None
    done: float | None = None
    failed: bool = False


class ReplyReader:
    """Reads the reply topic and timestamps first chunks and terminal events per request."""

    def __init__(self) -> None:
        self.reqs: dict[str, Req] = {}
        self.terminal = 0

    async def run(self, consumer: Any) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            for records in batch.values():
                for record in records:
                    headers = dict(record.headers)
                    req = self.reqs.get(headers.get("ce_correlationid", b"").decode())
                    if req is None or req.done is not None:
                        continue
                    kind = headers.get("ce_type", b"").decode().rsplit(".", 1)[-1]
                    if kind == "chunk" and req.first is None:
                        req.first = now
                    elif kind in ("completed", "failed"):
                        req.done, req.failed = now, kind == "failed"
                        self.terminal += 1


def http_json(url: str, payload: dict[str, Any] | None = None) -> dict[str, Any] | None:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"null")
    except (OSError, ValueError):
        return None


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_fake(args: argparse.Namespace) -> str:
    proc = spawn(
        [sys.executable, "-m", "tests.fakes.openai_server", "--port", "0"],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline().decode().strip() if ready else ""
    if not line.isdigit():
        raise RuntimeError(f"fake OpenAI server did not print its port (got {line!r})")
    return f"http://127.0.0.1:{line}"


def set_scenario(fake: str, tokens: int, ttft: float, token_rate: float) -> None:
    scenario = {"tokens": tokens, "first_token_delay": ttft, "token_delay": 1.0 / token_rate}
    if http_json(f"{fake}/_scenarios", {"*": scenario}) is None:
        raise RuntimeError("fake OpenAI server did not accept the scenario")


def kafka_bootstrap() -> tuple[str, Any]:
    """Return (bootstrap servers, local_kafka module if this run started the broker)."""
    if configured := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return configured, None
    spec = importlib.util.spec_from_file_location(
        "local_kafka", ROOT / "tools/kafka/local_kafka.py"
    )
    assert spec is not None
    assert spec.loader is not None
    local_kafka = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(local_kafka)
    started = not local_kafka.is_answering()
    return local_kafka.ensure_running(), local_kafka if started else None


def peak_rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


async def bench(args: argparse.Namespace, bootstrap: str, fake: str, results: dict[str, Any]):
    import psutil
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from shared.contracts import LLM_CHAT_REQUESTED
    from shared.contracts.events import EXT_REPLY_TO
    from shared.runtime.codec import encode_binary
    from shared.runtime.producer import KafkaPublisher
    from shared.runtime.topics import ensure_topics

    tag = uuid.uuid4().hex[:8]
    req_topic, reply_topic = f"bench-{tag}.llm.requests", f"bench-{tag}.llm.results"
    await ensure_topics(
        bootstrap, [req_topic, reply_topic], partitions=args.partitions, replication_factor=1
    )
    http_port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "OPENAI_BASE_URL": f"{fake}/v1",
        "OPENAI_API_KEY": "bench",
        "LLM_WORKER_REQUEST_TOPIC": req_topic,
        "LLM_WORKER_DEFAULT_REPLY_TOPIC": reply_topic,
        "LLM_WORKER_GROUP_ID": f"bench-{tag}",
        "LLM_WORKER_MAX_IN_FLIGHT": str(args.max_in_flight),
        "LLM_WORKER_TOPIC_PARTITIONS": str(args.partitions),
        "LLM_WORKER_HTTP_PORT": str(http_port),
        "LLM_WORKER_LOG_LEVEL": "WARNING",
        "LLM_WORKER_GRACE_PERIOD": "2",
    }
    log_path = Path(tempfile.gettempdir()) / f"llm-bench-worker-{tag}.log"
    results["worker_log"] = str(log_path)
    with log_path.open("wb") as log:
        worker = spawn([sys.executable, "-m", "llm_worker"], env=env, stdout=log, stderr=log)
    health_url = f"http://127.0.0.1:{http_port}/health"
    deadline = time.monotonic() + 60
    while not ((await asyncio.to_thread(http_json, health_url)) or {}).get("ready"):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker not ready; see {log_path}")
        await asyncio.sleep(0.2)
    wproc = psutil.Process(worker.pid)

    def worker_cpu() -> float:
        times = wproc.cpu_times()
        return times.user + times.system

    publisher = KafkaPublisher(bootstrap, client_id="ferryman-bench")
    await publisher.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    reader = ReplyReader()
    reader_task: asyncio.Task[None] | None = None
    try:
        for _ in range(50):
            if partitions := consumer.partitions_for_topic(reply_topic):
                break
            await consumer._client.force_metadata_update()
        assigned = [TopicPartition(reply_topic, p) for p in sorted(partitions or ())]
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)
        for tp in assigned:  # pin positions before anything is published
            await consumer.position(tp)
        reader_task = asyncio.create_task(reader.run(consumer))

        def encode(count: int) -> list[tuple[str, bytes, list[tuple[str, bytes]]]]:
            out = []
            for _ in range(count):
                rid = str(uuid.uuid4())
                attributes = {
                    "id": rid,
                    "type": LLM_CHAT_REQUESTED,
                    "source": "/ferryman/bench",
                    "datacontenttype": "application/json",
                    EXT_REPLY_TO: reply_topic,
                }
                body = {"model": MODEL, "messages": MESSAGES, "stream": True}
                headers, value = encode_binary(attributes, json.dumps(body).encode())
                out.append((rid, value, headers))
            return out

        async def send(item: tuple[str, bytes, list[tuple[str, bytes]]]) -> Any:
            rid, value, headers = item
            reader.reqs[rid] = req = Req(sent=time.monotonic())
            future = await publisher.send(req_topic, value, key=rid.encode(), headers=headers)
            return req, future

        async def wait_terminal(target: int, timeout: float) -> None:
            end = time.monotonic() + timeout
            while reader.terminal < target and time.monotonic() < end and worker.poll() is None:
                await asyncio.sleep(0.05)

        # Phase A: burst.
        set_scenario(fake, args.burst_tokens, args.ttft, args.burst_token_rate)
        items = encode(args.burst)
        t0 = time.monotonic()
        futures = [(await send(item))[1] for item in items]
        await asyncio.wait_for(asyncio.gather(*futures), 30)
        stream_s = args.ttft + args.burst_tokens / args.burst_token_rate
        await wait_terminal(args.burst, stream_s + 90)
        status = (await asyncio.to_thread(http_json, health_url)) or {}
        burst = [reader.reqs[rid] for rid, _, _ in items]
        results["A"] = {
            "burst": args.burst,
            "stream_s": round(stream_s, 3),
            "completed": sum(1 for r in burst if r.done is not None and not r.failed),
            "failed": sum(1 for r in burst if r.failed),
            "peak_in_flight": status.get("consumer", {}).get("peak_in_flight"),
            "wall_s": round(time.monotonic() - t0, 3),
        }

        # Phase B: fixed rate.
        set_scenario(fake, args.tokens, args.ttft, args.token_rate)
        items = encode(args.requests)
        sent: list[Req] = []
        futures = []

        async def fire(i: int) -> None:
            req, future = await send(items[i])
            sent.append(req)
            futures.append(future)

        base = reader.terminal
        cpu0 = worker_cpu()
        await paced(args.requests, args.rate, fire)
        await wait_terminal(base + args.requests, 60)
        cpu = worker_cpu() - cpu0
        await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 10)
        added = [(r.first - r.sent - args.ttft) * 1000 for r in sent if r.first is not None]
        ends = [r.done for r in sent if r.done is not None]
        completed = sum(1 for r in sent if r.done is not None and not r.failed)
        span = (max(ends) - sent[0].sent) if ends else float("nan")
        results["B"] = {
            "requests": args.requests,
            "rate": args.rate,
            "completed": completed,
            "failed": sum(1 for r in sent if r.failed),
            "added_ms_p50": pct(added, 50),
            "added_ms_p95": pct(added, 95),
            "added_ms_p99": pct(added, 99),
            "added_ms_max": max(added) if added else None,
            "completed_per_s": completed / span if ends else 0.0,
            "worker_cpu_s": cpu,
            "worker_cpu_s_per_1k": cpu / args.requests * 1000,
            "worker_peak_rss_mb": peak_rss_mb(worker.pid),
        }
    finally:
        if reader_task is not None:
            reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader_task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), 10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(publisher.stop(), 10)

    # Phase C: bare SDK baseline, in its own process (the worker sits idle meanwhile).
    cmd = [
        sys.executable,
        "-m",
        "tests.bench.llm_bench",
        "--bare-child",
        "--base-url",
        f"{fake}/v1",
        "--requests",
        str(args.requests),
        "--rate",
        str(args.rate),
    ]
    bare = spawn(cmd, stdout=subprocess.PIPE)
    out, _ = await asyncio.to_thread(bare.communicate, None, args.requests / args.rate + 90)
    c = json.loads(out.decode().strip().splitlines()[-1])
    c["cpu_s_per_1k"] = c["cpu_s"] / args.requests * 1000
    results["C"] = c
    results["cpu_ratio_worker_over_bare"] = results["B"]["worker_cpu_s_per_1k"] / c["cpu_s_per_1k"]


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    a, b, c = results.get("A", {}), results.get("B", {}), results.get("C", {})

    def check(value: Any, ok: Any) -> str:
        return "n/a" if value is None else ("PASS" if ok(value) else "MISS")

    def fmt(value: Any, unit: str = "") -> str:
        return (
            "-"
            if value is None
            else (f"{value:.2f}{unit}" if isinstance(value, float) else f"{value}{unit}")
        )

    ratio = results.get("cpu_ratio_worker_over_bare")
    rows = [
        (
            "A peak in-flight streams",
            fmt(a.get("peak_in_flight")),
            "≥ 500",
            check(a.get("peak_in_flight"), lambda v: v >= 500),
        ),
        ("A completed / failed", f"{a.get('completed')} / {a.get('failed')}", "", ""),
        (
            "B added latency p50",
            fmt(b.get("added_ms_p50"), " ms"),
            "≤ 5 ms",
            check(b.get("added_ms_p50"), lambda v: v <= 5),
        ),
        ("B added latency p95", fmt(b.get("added_ms_p95"), " ms"), "", ""),
        (
            "B added latency p99",
            fmt(b.get("added_ms_p99"), " ms"),
            "≤ 25 ms",
            check(b.get("added_ms_p99"), lambda v: v <= 25),
        ),
        ("B completed / failed", f"{b.get('completed')} / {b.get('failed')}", "", ""),
        ("B completed req/s", fmt(b.get("completed_per_s")), f"≈ {args.rate:g}", ""),
        ("B worker CPU-s / 1k req", fmt(b.get("worker_cpu_s_per_1k")), "", ""),
        ("B worker peak RSS", fmt(b.get("worker_peak_rss_mb"), " MB"), "", ""),
        ("C bare SDK CPU-s / 1k req", fmt(c.get("cpu_s_per_1k")), "", ""),
        ("C bare SDK ttft p50", fmt(c.get("ttft_p50_ms"), " ms"), "", ""),
        ("CPU ratio worker / bare", fmt(ratio), "≤ 1.5", check(ratio, lambda v: v <= 1.5)),
    ]
    print(f"\n{'metric':<28} {'value':>14}  {'target':<9} status")
    for name, value, target, status in rows:
        print(f"{name:<28} {value:>14}  {target:<9} {status}")
    print("BENCH_JSON " + json.dumps(results, default=str), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ttft", type=float, default=0.05, help="fake time to first token, s")
    p.add_argument("--tokens", type=int, default=32, help="tokens per answer (phases B, C)")
    p.add_argument("--token-rate", type=float, default=200.0, help="fake tokens/s (B, C)")
    p.add_argument("--burst", type=int, default=600, help="requests published at once (A)")
    p.add_argument("--burst-tokens", type=int, default=32, help="tokens per answer (A)")
    p.add_argument("--burst-token-rate", type=float, default=12.0, help="tokens/s (A)")
    p.add_argument("--requests", type=int, default=1000, help="requests (B, C)")
    p.add_argument("--rate", type=float, default=100.0, help="requests/s (B, C)")
    p.add_argument("--max-in-flight", type=int, default=1024)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--warmup", type=int, default=20, help=argparse.SUPPRESS)
    p.add_argument("--bare-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--base-url", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.bare_child:
        asyncio.run(bare_child(args))
        return
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    command = shlex.join([sys.executable, "-m", "tests.bench.llm_bench", *sys.argv[1:]])
    results: dict[str, Any] = {"command": command, "args": vars(args)}
    local_kafka = None
    try:
        bootstrap, local_kafka = kafka_bootstrap()
        results["bootstrap"] = bootstrap
        fake = start_fake(args)
        asyncio.run(asyncio.wait_for(bench(args, bootstrap, fake, results), 600))
    except (Exception, KeyboardInterrupt) as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
        print(f"bench aborted: {results['error']}", file=sys.stderr)
    finally:
        cleanup()
        if local_kafka is not None:
            local_kafka.stop()
    report(args, results)


if __name__ == "__main__":
    main()
