"""The bare MCP SDK loop: the same tool calls straight through `mcp.Client`, no Kafka.

    python -m tests.bench.mcp_bare --transport=http --url=URL --calls=N --rate=R --warmup=W
    python -m tests.bench.mcp_bare --transport=stdio --calls=N --burst --seconds=2

runs in its own process (so its CPU is its own) on uvloop (like the worker), against the
in-repo toolbox (`tests/fakes/mcp_servers/toolbox.py`): over streamable HTTP at `--url`, or
over stdio as its own child process. It prints one JSON line.

Paced (default): `--warmup` unmeasured concurrent `echo` calls, then `--calls` `echo` calls
started at t0 + i/rate (open loop: never waiting for a reply before the next), each timed
from just before `call_tool` to its result. Keys: `cpu_s` (`time.process_time()` over the
paced loop and the wait for its last reply), `wall_s`, `completed`, `errors`,
`latency_ms_p50`/`_p95`/`_p99`/`_p100`.

`--burst`: `--calls` calls of `slow(seconds, steps=1)` started at once (`--pool N`: over
HTTP, a client whose pool holds N connections instead of the SDK's default 100). Keys: `completed`,
`errors`, `wall_s` (first start to last result), `first_error`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from tests.bench.bare import paced, pct
from tests.mcp_servers import toolbox_stdio


def client(args: argparse.Namespace) -> Any:
    """An `mcp.Client` (not entered) on the toolbox, with the SDK's defaults but no response
    cache (every call must reach the server); with `--pool`, over HTTP, an `httpx2` client
    whose pool holds that many connections (the SDK's default client holds 100)."""
    from mcp import Client, StdioServerParameters

    if args.transport == "http" and args.pool:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        limits = httpx2.Limits(max_connections=args.pool, max_keepalive_connections=args.pool)
        http = httpx2.AsyncClient(limits=limits, timeout=httpx2.Timeout(30, read=300))
        return Client(streamable_http_client(args.url, http_client=http), cache=None)
    if args.transport == "http":
        return Client(args.url, cache=None)
    command, arguments = toolbox_stdio()
    return Client(StdioServerParameters(command=command, args=arguments), cache=None)


async def paced_calls(args: argparse.Namespace) -> dict[str, Any]:
    """`args.calls` `echo` calls at `args.rate` after `args.warmup` unmeasured ones."""
    latencies: list[float] = []
    errors: list[str] = []
    async with client(args) as mcp:

        async def one() -> None:
            start = time.monotonic()
            try:
                result = await mcp.call_tool("echo", {"text": "bench"})
            except Exception as exc:  # counted and reported, never hidden
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            if result.is_error:
                errors.append("isError")
                return
            latencies.append(time.monotonic() - start)

        await asyncio.gather(*(one() for _ in range(args.warmup)))
        latencies.clear()
        errors.clear()
        tasks: list[asyncio.Task[None]] = []

        async def fire(_i: int) -> None:
            tasks.append(asyncio.create_task(one()))

        cpu0, t0 = time.process_time(), time.monotonic()
        await paced(args.calls, args.rate, fire)
        await asyncio.wait_for(asyncio.gather(*tasks), 60 + args.calls / args.rate)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    out: dict[str, Any] = {
        "cpu_s": cpu,
        "wall_s": wall,
        "completed": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }
    for q in (50, 95, 99, 100):
        value = pct(latencies, q)
        out[f"latency_ms_p{q}"] = None if value is None else value * 1000
    return out


def describe(exc: BaseException) -> str:
    """Each leaf exception of `exc` (groups flattened): its type, its root cause, and where
    it was raised: the innermost frame of the `mcp` package, then the innermost of all."""
    if isinstance(exc, BaseExceptionGroup):
        leaves: list[BaseException] = list(exc.exceptions)  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
        return "; ".join(describe(leaf) for leaf in leaves)
    where, cause = "", exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    frames = traceback.extract_tb(exc.__traceback__)
    in_sdk = [f for f in frames if f"{os.sep}mcp{os.sep}" in f.filename]
    for frame in (in_sdk[-1:] if in_sdk else []) + frames[-1:]:
        where += f" at {Path(frame.filename).name}:{frame.lineno} in {frame.name}"
    kind = type(exc)
    root = type(cause)
    inner = f" (from {root.__module__}.{root.__qualname__})" if cause is not exc else ""
    return f"{kind.__module__}.{kind.__qualname__}: {exc}{inner}{where}"


async def burst(args: argparse.Namespace) -> dict[str, Any]:
    """`args.calls` calls of `slow(args.seconds)` started at once. If the client itself falls
    over (its transport's task group fails), `client_failure` says what and where."""
    errors: list[str] = []
    completed, failure, t0, wall = 0, None, time.monotonic(), None
    try:
        async with client(args) as mcp:

            async def one() -> None:
                nonlocal completed
                try:
                    result = await mcp.call_tool("slow", {"seconds": args.seconds, "steps": 1})
                except Exception as exc:  # counted and reported, never hidden
                    errors.append(f"{type(exc).__name__}: {exc}")
                    return
                completed += not result.is_error

            t0 = time.monotonic()
            await asyncio.wait_for(
                asyncio.gather(*(one() for _ in range(args.calls))), args.seconds * 20 + 120
            )
            wall = time.monotonic() - t0
    except Exception as exc:  # the client fell over: report it, with what had completed
        failure = describe(exc)
    wall = time.monotonic() - t0 if wall is None else wall  # up to the failure
    return {"completed": completed, "errors": len(errors), "wall_s": wall,
            "first_error": errors[0] if errors else None, "client_failure": failure}  # fmt: skip


def command(
    transport: str, url: str | None, calls: int, *, rate: float = 0.0, warmup: int = 0,
    burst_seconds: float | None = None, pool: int = 0,
) -> list[str]:  # fmt: skip
    """The command line that runs the bare loop in its own process."""
    cmd = [sys.executable, "-m", "tests.bench.mcp_bare", f"--transport={transport}",
           f"--calls={calls}"]  # fmt: skip
    if url is not None:
        cmd += [f"--url={url}", f"--pool={pool}"]
    if burst_seconds is not None:
        return [*cmd, "--burst", f"--seconds={burst_seconds}"]
    return [*cmd, f"--rate={rate}", f"--warmup={warmup}"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--transport", choices=("http", "stdio"), required=True)
    p.add_argument("--url", help="the toolbox's streamable HTTP endpoint (--transport=http)")
    p.add_argument("--calls", type=int, required=True)
    p.add_argument("--rate", type=float, default=100.0, help="calls/s (paced)")
    p.add_argument("--warmup", type=int, default=0, help="unmeasured calls first (paced)")
    p.add_argument("--burst", action="store_true", help="start every call at once")
    p.add_argument("--seconds", type=float, default=2.0, help="slow's duration (--burst)")
    p.add_argument(
        "--pool",
        type=int,
        default=0,
        help="HTTP connections the client may hold (0: the SDK's default client)",
    )
    args = p.parse_args()
    if args.transport == "http" and not args.url:
        p.error("--transport=http needs --url")
    # Same event loop as the worker (uvloop), so the CPU comparison is like for like.
    import uvloop

    result = uvloop.run(burst(args) if args.burst else paced_calls(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
