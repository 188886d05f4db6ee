"""The response cache's bench: what a hit costs against a provider call, through Kafka.

Processes: Kafka, the fake OpenAI server (`--ttft` before the first token, `--tokens` at
`--token-rate`), one LLM worker whose route `cached` has the response cache on. Per backend
(`memory`, then `redis` when a redis-server can be started):

- phase `provider`: `--requests` distinct prompts (temperature 0, one tenant) at `--rate`
  req/s: every one a miss, answered by the fake and stored;
- phase `hit`: the same prompts again at the same rate: every one a hit (the fake's call
  count must stay 0).

Per phase: first-chunk and completed latency from publish (p50/p95/p99 ms), the worker's CPU
seconds per 1,000 requests, the fake's calls; per backend the hit/provider ratios and the
bytes stored per entry. Prints a table and one `BENCH_JSON {...}` line, writes the JSON to
`--out` (default `.bench/cache-bench-<time>.json`). docs/benchmarks.md, "Response cache".

    uv run --frozen python -m tests.bench.cache_bench [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from ferryman.codec import encode_binary
from ferryman.contracts import LLM_CHAT_REQUESTED
from ferryman.contracts.events import EXT_REPLY_TO, EXT_TENANT
from ferryman.publisher import KafkaPublisher
from ferryman.topics import ensure_topics
from tests.bench.bare import paced, pct
from tests.bench.cache_report import table
from tests.bench.procs import (
    ROOT,
    Fake,
    cleanup,
    free_port,
    http_json,
    kafka_bootstrap,
    spawn,
    stop,
)
from tests.bench.session import ReplyReader, Req, pin_to_end
from tests.redis_server import RedisUnavailable, local_redis

MODEL = "bench-cache"
ROUTING = (
    f"deployments:\n  d: {{provider: openai, model: {MODEL}}}\n"
    "routes:\n  cached: {deployments: [d], response_cache: {enabled: true, ttl: 3600}}\n"
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="the response cache bench")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--ttft", type=float, default=0.2)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--token-rate", type=float, default=200.0)
    parser.add_argument("--backends", default="memory,redis")
    parser.add_argument("--quick", action="store_true", help="100 requests at 25 req/s")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.rate = 100, 25.0
    return args


class CacheSession:
    """One worker with the cache on `backend`, its topics, and the bench's client side."""

    def __init__(self, bootstrap: str, fake: Fake, workdir: Path, env: dict[str, str]) -> None:
        self.bootstrap, self.fake, self.workdir, self.env = bootstrap, fake, workdir, env
        tag = uuid.uuid4().hex[:8]
        self.req_topic, self.reply_topic = f"bench-{tag}.llm.requests", f"bench-{tag}.llm.results"
        self.group, self.port = f"bench-{tag}", free_port()
        self.reader = ReplyReader()
        self.publisher = KafkaPublisher(bootstrap, client_id="ferryman-cache-bench")
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        self.proc: Any = None
        self.process: psutil.Process | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CacheSession:
        await ensure_topics(self.bootstrap, [self.req_topic, self.reply_topic], partitions=3,
                            replication_factor=1)  # fmt: skip
        routing = self.workdir / "routing.yaml"
        routing.write_text(ROUTING)
        inherited = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env = {**inherited, "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
               "OPENAI_BASE_URL": f"{self.fake.url}/v1", "OPENAI_API_KEY": "bench",
               "LLM_WORKER_REQUEST_TOPIC": self.req_topic,
               "LLM_WORKER_DEFAULT_REPLY_TOPIC": self.reply_topic,
               "LLM_WORKER_GROUP_ID": self.group, "LLM_WORKER_HTTP_PORT": str(self.port),
               "LLM_WORKER_ROUTING_FILE": str(routing), "LLM_WORKER_GRACE_PERIOD": "2",
               "LLM_WORKER_TOPIC_PARTITIONS": "3", "LLM_WORKER_LOG_LEVEL": "WARNING",
               "LLM_WORKER_CONTROL_TOPIC": f"{self.group}.control", **self.env}  # fmt: skip
        log = (self.workdir / "worker.log").open("wb")
        self.proc = spawn([sys.executable, "-m", "llm_worker"], env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 90
        while not (self.health() or {}).get("ready"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not get ready; see {self.workdir}/worker.log")
            await asyncio.sleep(0.2)
        self.process = psutil.Process(self.proc.pid)
        await self.publisher.start()
        await self.consumer.start()
        await pin_to_end(self.consumer, self.reply_topic)
        self._task = asyncio.create_task(self.reader.run(self.consumer))
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for closing in (self.consumer.stop(), self.publisher.stop()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(closing, 10)
        if self.proc is not None:
            await asyncio.to_thread(stop, self.proc)

    def health(self) -> dict[str, Any] | None:
        return http_json(f"http://127.0.0.1:{self.port}/health")

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the worker's `/metrics` (0 when absent)."""
        with contextlib.suppress(Exception):
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                text = r.read().decode()
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                        return s.value
        return 0.0

    def cpu(self) -> float:
        assert self.process is not None
        return sum(self.process.cpu_times()[:2])

    def encode(self, prompts: list[str]) -> list[tuple[str, bytes, list[tuple[str, bytes]]]]:
        common = {"type": LLM_CHAT_REQUESTED, "source": "/ferryman/bench",
                  "datacontenttype": "application/json", EXT_REPLY_TO: self.reply_topic,
                  EXT_TENANT: "bench"}  # fmt: skip
        items = []
        for prompt in prompts:
            rid = str(uuid.uuid4())
            body = {"model": "cached", "temperature": 0, "stream": True,
                    "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
            headers, value = encode_binary({**common, "id": rid}, json.dumps(body).encode())
            items.append((rid, value, headers))
        return items


async def phase(s: CacheSession, args: argparse.Namespace, prompts: list[str]) -> dict[str, Any]:
    """Publish one request per prompt at `args.rate`; the figures of the phase."""
    items, sent = s.encode(prompts), list[Req]()
    futures: list[asyncio.Future[Any]] = []

    async def fire(i: int) -> None:
        rid, value, headers = items[i]
        s.reader.reqs[rid] = req = Req(sent=time.monotonic())
        futures.append(await s.publisher.send(s.req_topic, value, key=rid.encode(),
                                              headers=headers))  # fmt: skip
        sent.append(req)

    await asyncio.to_thread(s.fake.reset_stats)
    base, cpu0 = s.reader.terminal, s.cpu()
    await paced(len(items), args.rate, fire)
    end = time.monotonic() + 120
    while s.reader.terminal < base + len(items) and time.monotonic() < end:
        await asyncio.sleep(0.05)
    cpu = s.cpu() - cpu0
    await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 10)
    figures: dict[str, Any] = {
        "completed": sum(r.done is not None and not r.failed for r in sent),
        "failed": sum(r.failed for r in sent),
        "cpu_s_per_1k": cpu / len(items) * 1000,
        "fake_calls": (await asyncio.to_thread(s.fake.stats)).get("calls"),
    }
    for name, values in (
        ("first_chunk", [(r.first - r.sent) * 1000 for r in sent if r.first is not None]),
        ("completed", [(r.done - r.sent) * 1000 for r in sent if r.done is not None]),
    ):
        for q in (50, 95, 99):
            figures[f"{name}_p{q}_ms"] = pct(values, q)
    return figures


async def stored_all(s: CacheSession, count: int, redis_url: str | None) -> None:
    """Wait (bounded) until `count` answers are in the cache: stores run after `completed`."""
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if redis_url is not None:
            import redis

            with redis.Redis.from_url(redis_url) as client:  # pyright: ignore[reportUnknownMemberType]
                held = int(client.dbsize())  # pyright: ignore[reportUnknownMemberType, reportArgumentType]
        else:
            held = ((s.health() or {}).get("response_cache") or {}).get("entries", 0)
        if held >= count:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"fewer than {count} answers were stored within 60 s")


async def one_backend(
    args: argparse.Namespace, bootstrap: str, fake: Fake, backend: str, redis_url: str | None
) -> dict[str, Any]:
    env = {"LLM_WORKER_RESPONSE_CACHE__BACKEND": backend}
    if redis_url is not None:
        env["LLM_WORKER_RESPONSE_CACHE__REDIS_URL"] = redis_url
    prompts = [f"bench prompt {i} {uuid.uuid4().hex}" for i in range(args.requests)]
    with tempfile.TemporaryDirectory(prefix=f"cache-bench-{backend}-") as workdir:
        async with CacheSession(bootstrap, fake, Path(workdir), env) as s:
            await phase(s, args, [f"warm-up {p}" for p in prompts[: max(10, args.requests // 10)]])
            provider = await phase(s, args, prompts)
            await stored_all(s, args.requests + max(10, args.requests // 10), redis_url)
            stored = s.metric("llm_worker_response_cache_bytes_total", direction="stored")
            hit = await phase(s, args, prompts)
    ratio = lambda key: (hit[key] / provider[key]) if hit.get(key) and provider.get(key) else None  # noqa: E731
    return {
        "provider": provider,
        "hit": hit,
        "first_chunk_ratio": ratio("first_chunk_p50_ms"),
        "completed_ratio": ratio("completed_p50_ms"),
        "cpu_ratio": ratio("cpu_s_per_1k"),
        "bytes_per_entry": stored / (args.requests + max(10, args.requests // 10)),
    }


async def bench(args: argparse.Namespace, bootstrap: str, results: dict[str, Any]) -> None:
    fake = await asyncio.to_thread(Fake.start)
    await asyncio.to_thread(fake.scenario, args.tokens, args.ttft, args.token_rate)
    backends: dict[str, Any] = results.setdefault("backends", {})
    for backend in args.backends.split(","):
        try:
            if backend == "redis":
                with contextlib.ExitStack() as stack:
                    workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="redis-"))
                    try:
                        url = stack.enter_context(local_redis(Path(workdir)))
                    except RedisUnavailable as exc:
                        backends[backend] = {"skipped": str(exc)}
                        continue
                    backends[backend] = await one_backend(args, bootstrap, fake, backend, url)
            else:
                backends[backend] = await one_backend(args, bootstrap, fake, backend, None)
        except Exception as exc:
            backends[backend] = {"error": f"{type(exc).__name__}: {exc}"}


def main() -> None:
    """Run the bench; print and write the report (exit 0 even when a backend failed)."""
    args = parse_args(sys.argv[1:])
    command = shlex.join([sys.executable, "-m", "tests.bench.cache_bench", *sys.argv[1:]])
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_path = args.out or ROOT / ".bench" / f"cache-bench-{stamp}.json"
    results: dict[str, Any] = {"command": command, "args": vars(args), "started": stamp,
                               "cpus": os.cpu_count()}  # fmt: skip
    local_kafka = None
    try:
        bootstrap, local_kafka = kafka_bootstrap()
        asyncio.run(asyncio.wait_for(bench(args, bootstrap, results), args.timeout))
    except (Exception, KeyboardInterrupt) as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
        print(f"bench aborted: {results['error']}", file=sys.stderr)
    finally:
        cleanup()
        if local_kafka is not None:
            with contextlib.suppress(Exception):
                local_kafka.stop()
    print(table(results))
    print("BENCH_JSON " + json.dumps(results, default=str))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"report written to {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
