"""The bare SDK loop: the same requests at the same rate straight through `openai`, no Kafka.

`python -m tests.bench.bare --base-url=… --requests=N --rate=R --ttft=S --warmup=W` runs in
its own process (so its CPU is its own) on uvloop (like the worker) and prints one JSON
line: `cpu_s` (`time.process_time()` over the paced loop), `wall_s`, `completed`,
`errors`, `added_ms_p50`/`added_ms_p99` (time to first content token minus `--ttft`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

MODEL = "openai/gpt-bench"
MESSAGES = [{"role": "user", "content": "Say something for the benchmark."}]


def pct(values: list[float], q: float) -> float | None:
    """The `q`th percentile (nearest rank) of `values`, None when empty."""
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


async def bare_loop(args: argparse.Namespace) -> dict[str, Any]:
    """Stream `args.requests` chat calls at `args.rate` after `args.warmup` unmeasured ones."""
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

    await asyncio.gather(*(one() for _ in range(args.warmup)))
    firsts.clear()
    tasks: list[asyncio.Task[None]] = []

    async def fire(_i: int) -> None:
        tasks.append(asyncio.create_task(one()))

    cpu0, t0 = time.process_time(), time.monotonic()
    await paced(args.requests, args.rate, fire)
    done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60 + len(tasks))
    cpu, wall, errors = time.process_time() - cpu0, time.monotonic() - t0, sum(map(bool, done))
    await client.close()
    out: dict[str, Any] = {"cpu_s": cpu, "wall_s": wall, "completed": len(firsts),
                           "errors": errors}  # fmt: skip
    for q in (50, 99):
        if (value := pct(firsts, q)) is not None:
            out[f"added_ms_p{q}"] = value * 1000 - args.ttft * 1000
    return out


def command(base_url: str, requests: int, rate: float, ttft: float, warmup: int) -> list[str]:
    """The command line that runs the bare loop in its own process."""
    return [sys.executable, "-m", "tests.bench.bare", f"--base-url={base_url}",
            f"--requests={requests}", f"--rate={rate}", f"--ttft={ttft}",
            f"--warmup={warmup}"]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base-url", required=True)
    p.add_argument("--requests", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--ttft", type=float, required=True)
    p.add_argument("--warmup", type=int, default=0)
    args = p.parse_args()
    # Same event loop as the worker (uvloop), so the CPU comparison is like for like.
    import uvloop

    print(json.dumps(uvloop.run(bare_loop(args))), flush=True)


if __name__ == "__main__":
    main()
