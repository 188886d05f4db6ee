"""Benchmark of the LLM worker through a real Kafka broker against a fake OpenAI server.

`uv run python -m tests.bench.llm_bench [options]` (what `make bench` runs). Processes:
the fake OpenAI SSE server (`tests.fakes.openai_server`), ONE worker (`python -m
llm_worker`) and, for phase C, a bare-SDK subprocess; each is separate so CPU is
attributed to the right process. Kafka is `KAFKA_BOOTSTRAP_SERVERS` if set, else the local
broker of `tools/kafka/local_kafka.py` (stopped at the end only if this run started it).

Phase A "concurrency": `--burst` requests are published at once against a slow stream
(`--burst-tokens` at `--burst-token-rate`, so streams overlap); reports the worker's
`/health` consumer.peak_in_flight (target ≥ 500).

Phase B "rate": `--requests` published at `--rate` req/s, paced by absolute clock targets
(no drift). The bench reads the reply topic itself (group_id=None, assigned and pinned to
its end before publishing) and stamps per request: publish (monotonic, just before the
producer enqueues it), first chunk seen, terminal event seen. added latency = (first chunk
seen - publish) - `--ttft` (the fake's time to first token); p50/p95/p99 in ms (targets
≤ 5 / ≤ 25). Also: completed req/s, worker CPU-seconds per 1,000 requests (psutil
user+system delta, first publish → last terminal event), worker peak RSS (VmHWM), and, as
diagnostics, the CPU % of the bench client, the fake and the whole host over the phase (a
saturated 2-core host inflates latency).

Phase C "bare SDK baseline": a subprocess streams the same requests at the same rate with
`openai.AsyncOpenAI(max_retries=0)` against the same fake; its CPU is `time.process_time()`
over the paced loop. Reports worker/bare CPU per request (target ≤ 1.5) and the bare loop's
own added latency (TTFT - `--ttft`: the floor the fake and HTTP impose without Kafka).

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
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MODEL = "openai/gpt-bench"
MESSAGES = [{"role": "user", "content": "Say something for the benchmark."}]
PROCS: list[subprocess.Popen[bytes]] = []
Item = tuple[str, bytes, list[tuple[str, bytes]]]  # request id, value, headers


def _die_with_parent() -> None:  # in the child before exec: SIGKILL it if the bench dies
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, cwd=ROOT, preexec_fn=_die_with_parent, **kwargs)
    PROCS.append(proc)
    return proc


def cleanup() -> None:
    """SIGTERM every process this bench started; SIGKILL those still alive after 8 s."""
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
    ordered = sorted(values)
    return ordered[round(q / 100 * (len(ordered) - 1))] if ordered else None


async def paced(count: int, rate: float, fire: Callable[[int], Awaitable[None]]) -> None:
    """Call `fire(i)` at t0 + i/rate (absolute targets: sleeps never accumulate drift)."""
    t0 = time.monotonic()
    for i in range(count):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await fire(i)


async def bare_child(args: argparse.Namespace) -> None:
    """Phase C, in its own process: the bare SDK loop; prints one JSON line."""
    import openai

    client = openai.AsyncOpenAI(base_url=args.base_url, api_key="bench", max_retries=0)
    params: Any = {"model": MODEL.split("/", 1)[1], "messages": MESSAGES, "stream": True}
    params["stream_options"] = {"include_usage": True}
    firsts: list[float] = []

    async def one() -> None:
        start, first = time.monotonic(), None
        stream = await client.chat.completions.create(**params)
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.monotonic()
        firsts.append((first or time.monotonic()) - start)

    await asyncio.gather(*(one() for _ in range(args.warmup)))  # like the worker's phase A
    firsts.clear()
    tasks: list[asyncio.Task[None]] = []

    async def fire(_i: int) -> None:
        tasks.append(asyncio.create_task(one()))

    cpu0, t0 = time.process_time(), time.monotonic()
    await paced(args.requests, args.rate, fire)
    done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60 + len(tasks))
    cpu, wall, errors = time.process_time() - cpu0, time.monotonic() - t0, sum(map(bool, done))
    added = {f"added_ms_p{q}": (pct(firsts, q) or 0.0) * 1000 - args.ttft * 1000 for q in (50, 99)}
    out = {"cpu_s": cpu, "wall_s": wall, "completed": len(firsts), "errors": errors}
    print(json.dumps({**out, **added} if firsts else out), flush=True)
    await client.close()


@dataclass
class Req:
    sent: float = 0.0
    first: float | None = None
    done: float | None = None
    failed: bool = False


class ReplyReader:
    """Reads the reply topic; timestamps each request's first chunk and terminal event."""

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
    except urllib.error.HTTPError as exc:  # /health answers 503 until ready
        return json.loads(exc.read() or b"null")
    except (OSError, ValueError):
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_fake() -> tuple[str, int]:
    proc = spawn([sys.executable, "-m", "tests.fakes.openai_server"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline().decode().strip() if ready else ""
    if not line.isdigit():
        raise RuntimeError(f"the fake OpenAI server did not print its port (got {line!r})")
    return f"http://127.0.0.1:{line}", proc.pid


def set_scenario(fake: str, tokens: int, ttft: float, token_rate: float) -> None:
    scenario = {"tokens": tokens, "first_token_delay": ttft, "token_delay": 1.0 / token_rate}
    if http_json(f"{fake}/_scenarios", {"*": scenario}) is None:
        raise RuntimeError("the fake OpenAI server refused the scenario")


def kafka_bootstrap() -> tuple[str, Any]:
    """Return (bootstrap servers, the local_kafka module if this run started the broker)."""
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


def start_worker(args: argparse.Namespace, bootstrap: str, fake: str, tag: str) -> tuple[Any, str]:
    port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "OPENAI_BASE_URL": f"{fake}/v1",
           "OPENAI_API_KEY": "bench", "LLM_WORKER_REQUEST_TOPIC": f"bench-{tag}.llm.requests",
           "LLM_WORKER_DEFAULT_REPLY_TOPIC": f"bench-{tag}.llm.results",
           "LLM_WORKER_GROUP_ID": f"bench-{tag}", "LLM_WORKER_HTTP_PORT": str(port),
           "LLM_WORKER_MAX_IN_FLIGHT": str(args.max_in_flight), "LLM_WORKER_GRACE_PERIOD": "2",
           "LLM_WORKER_TOPIC_PARTITIONS": str(args.partitions),
           "LLM_WORKER_LOG_LEVEL": "WARNING"}  # fmt: skip
    log_path = Path(tempfile.gettempdir()) / f"llm-bench-worker-{tag}.log"
    with log_path.open("wb") as log:
        worker = spawn([sys.executable, "-m", "llm_worker"], env=env, stdout=log, stderr=log)
    return worker, f"http://127.0.0.1:{port}/health"


async def bench(  # noqa: C901 - one linear script of three phases reads best in one place
    args: argparse.Namespace, bootstrap: str, fake_at: tuple[str, int], results: Any
):
    import psutil
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from ferryman.codec import encode_binary
    from ferryman.contracts import LLM_CHAT_REQUESTED
    from ferryman.contracts.events import EXT_REPLY_TO
    from ferryman.publisher import KafkaPublisher
    from ferryman.topics import ensure_topics

    tag, fake = uuid.uuid4().hex[:8], fake_at[0]
    req_topic, reply_topic = f"bench-{tag}.llm.requests", f"bench-{tag}.llm.results"
    await ensure_topics(bootstrap, [req_topic, reply_topic], partitions=args.partitions,
                        replication_factor=1)  # fmt: skip
    worker, health_url = start_worker(args, bootstrap, fake, tag)
    results["worker_log"] = str(Path(tempfile.gettempdir()) / f"llm-bench-worker-{tag}.log")
    deadline = time.monotonic() + 60
    while not ((await asyncio.to_thread(http_json, health_url)) or {}).get("ready"):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not get ready; see {results['worker_log']}")
        await asyncio.sleep(0.2)
    wproc, fproc = psutil.Process(worker.pid), psutil.Process(fake_at[1])

    def worker_cpu(proc: Any = wproc) -> float:
        return sum(proc.cpu_times()[:2])  # user + system

    publisher = KafkaPublisher(bootstrap, client_id="ferryman-bench")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    reader, reader_task = ReplyReader(), None
    try:
        await publisher.start()
        await consumer.start()
        for _ in range(50):
            if partitions := consumer.partitions_for_topic(reply_topic):
                break
            await consumer._client.force_metadata_update()
        assigned = [TopicPartition(reply_topic, p) for p in sorted(partitions or ())]
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)
        for tp in assigned:  # pin the positions before anything is published
            await consumer.position(tp)
        reader_task = asyncio.create_task(reader.run(consumer))

        body = json.dumps({"model": MODEL, "messages": MESSAGES, "stream": True}).encode()
        common = {"type": LLM_CHAT_REQUESTED, "source": "/ferryman/bench",
                  "datacontenttype": "application/json", EXT_REPLY_TO: reply_topic}  # fmt: skip

        def encode(count: int) -> list[Item]:  # done before a phase, outside its timing
            items: list[Item] = []
            for rid in (str(uuid.uuid4()) for _ in range(count)):
                headers, value = encode_binary({**common, "id": rid}, body)
                items.append((rid, value, headers))
            return items

        async def send(item: Item) -> tuple[Req, asyncio.Future[Any]]:
            rid, value, headers = item
            reader.reqs[rid] = req = Req(sent=time.monotonic())
            future = await publisher.send(req_topic, value, key=rid.encode(), headers=headers)
            return req, future

        async def wait_terminal(target: int, timeout: float) -> None:
            end = time.monotonic() + timeout
            while reader.terminal < target and time.monotonic() < end and worker.poll() is None:
                await asyncio.sleep(0.05)

        # Phase A: burst, with long streams so they overlap.
        set_scenario(fake, args.burst_tokens, args.ttft, args.burst_token_rate)
        items, t0 = encode(args.burst), time.monotonic()
        futures = [(await send(item))[1] for item in items]
        await asyncio.wait_for(asyncio.gather(*futures), 30)
        stream_s = args.ttft + args.burst_tokens / args.burst_token_rate
        await wait_terminal(args.burst, stream_s + 90)
        status = (await asyncio.to_thread(http_json, health_url)) or {}
        burst = [reader.reqs[item[0]] for item in items]
        peak = status.get("consumer", {}).get("peak_in_flight")
        results["A"] = {"stream_s": round(stream_s, 3), "wall_s": round(time.monotonic() - t0, 3),
                        "completed": sum(r.done is not None and not r.failed for r in burst),
                        "failed": sum(r.failed for r in burst), "peak_in_flight": peak}  # fmt: skip

        # Phase B: fixed rate, after an unmeasured run of the same load (a fresh JVM broker
        # compiles its hot paths under load; that would otherwise be charged to Ferryman).
        set_scenario(fake, args.tokens, args.ttft, args.token_rate)
        if args.steady_warmup:
            warm = encode(args.steady_warmup)
            base = reader.terminal

            async def fire_warm(i: int) -> None:
                await send(warm[i])

            await paced(args.steady_warmup, args.rate, fire_warm)
            await wait_terminal(base + args.steady_warmup, 60)
        items, sent, futures = encode(args.requests), [], []

        async def fire(i: int) -> None:
            req, future = await send(items[i])
            sent.append(req)
            futures.append(future)

        base, cpu0, fake0 = reader.terminal, worker_cpu(), worker_cpu(fproc)
        own0 = time.process_time()
        psutil.cpu_percent()
        await paced(args.requests, args.rate, fire)
        await wait_terminal(base + args.requests, 60)
        cpu, own, host = worker_cpu() - cpu0, time.process_time() - own0, psutil.cpu_percent()
        fake_cpu = worker_cpu(fproc) - fake0
        await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 10)
        added = [(r.first - r.sent - args.ttft) * 1000 for r in sent if r.first is not None]
        ends = [r.done for r in sent if r.done is not None]
        completed = sum(r.done is not None and not r.failed for r in sent)
        span = max(ends) - sent[0].sent if ends else float("nan")
        results["B"] = {"completed": completed, "failed": sum(r.failed for r in sent),
                        **{f"added_ms_p{q}": pct(added, q) for q in (50, 95, 99, 100)},
                        "completed_per_s": completed / span, "host_cpu_busy_pct": host,
                        "worker_cpu_s_per_1k": cpu / args.requests * 1000,
                        "worker_peak_rss_mb": peak_rss_mb(worker.pid),
                        "bench_client_cpu_pct": own / span * 100,
                        "fake_server_cpu_pct": fake_cpu / span * 100}  # fmt: skip
    finally:
        if reader_task is not None:
            reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader_task
        for closing in (consumer.stop(), publisher.stop()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(closing, 10)

    # Phase C: the bare SDK loop in its own process (the worker idles meanwhile).
    opts = f"--base-url={fake}/v1 --requests={args.requests} --rate={args.rate} --ttft={args.ttft}"
    cmd = [sys.executable, "-m", "tests.bench.llm_bench", "--bare-child", *opts.split()]
    cmd.append(f"--warmup={args.warmup}")
    cpu0, t0 = worker_cpu(), time.monotonic()
    bare = spawn(cmd, stdout=subprocess.PIPE)
    out, _ = await asyncio.to_thread(bare.communicate, None, args.requests / args.rate + 90)
    c = results["C"] = json.loads(out.decode().strip().splitlines()[-1])
    c["worker_idle_cpu_pct"] = (worker_cpu() - cpu0) / (time.monotonic() - t0) * 100
    c["cpu_s_per_1k"] = c["cpu_s"] / args.requests * 1000
    results["cpu_ratio_worker_over_bare"] = results["B"]["worker_cpu_s_per_1k"] / c["cpu_s_per_1k"]


ROWS: list[tuple[str, str, str, str, Callable[[float], bool] | None]] = [
    # label, section, key, target, check
    ("A peak in-flight streams", "A", "peak_in_flight", "≥ 500", lambda v: v >= 500),
    ("A completed / failed", "A", "completed/failed", "", None),
    ("B added latency p50 (ms)", "B", "added_ms_p50", "≤ 5", lambda v: v <= 5),
    ("B added latency p95 (ms)", "B", "added_ms_p95", "", None),
    ("B added latency p99 (ms)", "B", "added_ms_p99", "≤ 25", lambda v: v <= 25),
    ("B added latency max (ms)", "B", "added_ms_p100", "", None),
    ("B completed / failed", "B", "completed/failed", "", None),
    ("B completed req/s", "B", "completed_per_s", "", None),
    ("B worker CPU-s / 1k req", "B", "worker_cpu_s_per_1k", "", None),
    ("B worker peak RSS (MB)", "B", "worker_peak_rss_mb", "", None),
    ("B bench client CPU (%)", "B", "bench_client_cpu_pct", "", None),
    ("B fake server CPU (%)", "B", "fake_server_cpu_pct", "", None),
    ("B host CPU busy (%)", "B", "host_cpu_busy_pct", "", None),
    ("C bare SDK CPU-s / 1k req", "C", "cpu_s_per_1k", "", None),
    ("C bare SDK added p50 (ms)", "C", "added_ms_p50", "", None),
    ("C bare SDK added p99 (ms)", "C", "added_ms_p99", "", None),
    ("C worker idle CPU (%)", "C", "worker_idle_cpu_pct", "", None),
    ("CPU ratio worker / bare", "", "cpu_ratio_worker_over_bare", "≤ 1.5", lambda v: v <= 1.5),
]


def report(results: dict[str, Any]) -> None:
    print(f"\n{'metric':<28} {'value':>12}  {'target':<7} status")
    for label, section, key, target, check in ROWS:
        data = results.get(section, {}) if section else results
        values = [data.get(k) for k in key.split("/")]
        text = " / ".join("-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)
                          for v in values)  # fmt: skip
        status = "" if check is None else "n/a" if values[0] is None else (
            "PASS" if check(values[0]) else "MISS")  # fmt: skip
        if status:
            results.setdefault("targets", {})[label] = status
        print(f"{label:<28} {text:>12}  {target:<7} {status}")
    print("BENCH_JSON " + json.dumps(results, default=str), flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ttft", type=float, default=0.05, help="fake time to first token, s")
    p.add_argument("--tokens", type=int, default=32, help="tokens per answer (B, C)")
    p.add_argument("--token-rate", type=float, default=200.0, help="fake tokens/s (B, C)")
    p.add_argument("--burst", type=int, default=600, help="requests published at once (A)")
    p.add_argument("--burst-tokens", type=int, default=32, help="tokens per answer (A)")
    p.add_argument("--burst-token-rate", type=float, default=12.0, help="fake tokens/s (A)")
    p.add_argument("--requests", type=int, default=1000, help="requests (B, C)")
    p.add_argument("--rate", type=float, default=100.0, help="requests/s (B, C)")
    p.add_argument("--max-in-flight", type=int, default=1024, help="LLM_WORKER_MAX_IN_FLIGHT")
    p.add_argument("--partitions", type=int, default=6, help="LLM_WORKER_TOPIC_PARTITIONS")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured bare-SDK calls (C)")
    p.add_argument("--steady-warmup", type=int, default=1000,
                   help="unmeasured requests at --rate before phase B, so the broker's JIT, "
                        "the worker and the client are in steady state (0: off)")  # fmt: skip
    p.add_argument("--bare-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--base-url", help=argparse.SUPPRESS)
    return p.parse_args()


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    args = parse_args()
    if args.bare_child:
        # Same event loop as the worker (uvloop), so the CPU comparison is like for like.
        import uvloop

        uvloop.run(bare_child(args))
        return
    signal.signal(signal.SIGTERM, _interrupt)
    command = shlex.join([sys.executable, "-m", "tests.bench.llm_bench", *sys.argv[1:]])
    results: dict[str, Any] = {"command": command, "args": vars(args)}
    local_kafka = None
    try:
        bootstrap, local_kafka = kafka_bootstrap()
        results["bootstrap"] = bootstrap
        asyncio.run(asyncio.wait_for(bench(args, bootstrap, start_fake(), results), 600))
    except (Exception, KeyboardInterrupt) as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
        print(f"bench aborted: {results['error']}", file=sys.stderr)
    finally:
        cleanup()
        if local_kafka is not None:
            local_kafka.stop()
    report(results)


if __name__ == "__main__":
    main()
