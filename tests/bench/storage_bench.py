"""What moving bytes through the storage_worker costs: puts and gets through the worker (via
Kafka) against aiobotocore on the same moto S3 server directly, the worker's CPU per
operation, and its memory during large streamed copies.

`uv run --frozen python -m tests.bench.storage_bench [--quick]` (what `make bench-storage`
runs). Processes are separate: moto (`python -m moto.server`, one bucket), the worker
(`python -m storage_worker`, fresh topics `bench-<tag>.storage.*`, a policy file with the
backends `s3` on that bucket and two local roots `local` and `local2` in a temporary folder,
tenant `bench`), and this bench (the `StorageClient`, aiobotocore, httpx2), on uvloop. Kafka
is `KAFKA_BOOTSTRAP_SERVERS` if set, else the local broker of `tools/kafka/local_kafka.py`
(stopped at the end only if this run started it).

Phases, each `--iterations` sequential operations after `--warmup` unmeasured ones, timed
from the call until its result (or its last byte) is in hand:

1. inline, per size up to the inline limit (4 KiB, 64 KiB, 256 KiB): worker put
   (`StorageClient.put`, bytes base64 in the request) and get (`get_bytes`, bytes in the
   reply, SHA-256 checked) on `s3`, against `put_object` / `get_object` directly.
2. by URL, per `--url-sizes-mib`: worker put = a presign request (PUT) then the upload to the
   URL (httpx2); worker get = a get request answered with a URL, then the download; against
   `put_object` / `get_object` streamed directly.
3. copies through the worker, after a 16 MiB warm-up copy: `--copy-mib` MiB `local` →
   `local2` and `--s3-copy-mib` MiB `local` → `s3` (multipart), the sources written
   beforehand (deterministic pseudo-random bytes). The worker's RSS after the warm-up, its
   peak during the copy (VmHWM, reset by `clear_refs` before it), their difference, the
   progress events, the copy's checksum against the source's.

MiB/s = bytes moved / wall time of the phase. Worker CPU per operation: the worker process's
user + system time (/proc/<pid>/stat) over the phase / operations; client CPU: this process's.

Prints a table and one `BENCH_JSON {...}` line, writes the JSON to `--out` (default
`.bench/storage-bench-<UTC time>.json`), and exits 0 even when a phase failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import uvloop

from ferryman.contracts.storage import CopyCompleted, StorageProgress
from ferryman.storage_client import StorageClient
from tests.bench import tool_loop_report as tr
from tests.bench.mcp_bench import machine
from tests.bench.procs import ROOT, cleanup, kafka_bootstrap
from tests.bench.report import report
from tests.bench.storage_report import rows, size_label
from tests.bench.storage_session import SPACE, TENANT, StorageWorkerRun, start_moto
from tests.storage.large_object import MIB, write_local_object
from tests.storage.s3_store import admin_client

QUICK = {"iterations": 10, "warmup": 2, "url_iterations": 2, "url_sizes_mib": [8],
         "copy_mib": 128, "s3_copy_mib": 32}  # fmt: skip
INLINE_SIZES = (4 * 1024, 64 * 1024, 256 * 1024)
WARM_UP_MIB = 16
Op = Callable[[int], Awaitable[None]]


async def timed(
    op: Op, size: int, iterations: int, warmup: int, worker_cpu: Callable[[], float] | None
) -> dict[str, Any]:
    """`iterations` calls of `op` one at a time after `warmup`: MiB/s, latency (ms), CPU."""
    for i in range(warmup):
        await op(i)
    latencies: list[float] = []
    worker_before = worker_cpu() if worker_cpu else 0.0
    client_before, started = time.process_time(), time.perf_counter()
    for i in range(warmup, warmup + iterations):
        begun = time.perf_counter()
        await op(i)
        latencies.append((time.perf_counter() - begun) * 1000)
    wall = time.perf_counter() - started
    figures: dict[str, Any] = {
        "ops": iterations,
        "bytes_per_op": size,
        "wall_s": wall,
        "mib_per_s": iterations * size / MIB / wall,
        "ops_per_s": iterations / wall,
        "client_cpu_ms_per_op": (time.process_time() - client_before) * 1000 / iterations,
        **tr.summary(latencies),
    }
    if worker_cpu is not None:
        figures["worker_cpu_ms_per_op"] = (worker_cpu() - worker_before) * 1000 / iterations
    return figures


def with_ratios(modes: dict[str, Any]) -> dict[str, Any]:
    """`modes` plus the worker's MiB/s over the SDK's, for put and get."""
    for verb in ("put", "get"):
        worker, direct = modes.get(f"worker_{verb}"), modes.get(f"direct_{verb}")
        if worker and direct:
            modes[f"{verb}_speed_ratio"] = worker["mib_per_s"] / direct["mib_per_s"]
    return modes


async def inline_phase(
    storage: StorageClient, s3: Any, run: StorageWorkerRun, args: argparse.Namespace
) -> dict[str, Any]:
    """Inline puts and gets through the worker vs the SDK, per size."""
    n, w, out = args.iterations, args.warmup, {}
    for size in INLINE_SIZES:
        label, data = size_label(size), os.urandom(size)
        print(f"inline {label}", file=sys.stderr)

        async def worker_put(i: int, size: int = size, data: bytes = data) -> None:
            await storage.put(f"inline/{size}/{i}", data, backend="s3", tenant=TENANT)

        async def worker_get(i: int, size: int = size) -> None:
            got = await storage.get_bytes(f"inline/{size}/{i}", backend="s3", tenant=TENANT)
            if len(got) != size:
                raise RuntimeError(f"got {len(got)} bytes, not {size}")

        async def direct_put(i: int, size: int = size, data: bytes = data) -> None:
            await s3.put_object(Bucket=run.bucket, Key=f"direct/inline/{size}/{i}", Body=data)

        async def direct_get(i: int, size: int = size) -> None:
            answer = await s3.get_object(Bucket=run.bucket, Key=f"direct/inline/{size}/{i}")
            async with answer["Body"] as body:
                if len(await body.read()) != size:
                    raise RuntimeError("short read")

        out[label] = with_ratios({
            "worker_put": await timed(worker_put, size, n, w, run.cpu),
            "direct_put": await timed(direct_put, size, n, w, None),
            "worker_get": await timed(worker_get, size, n, w, run.cpu),
            "direct_get": await timed(direct_get, size, n, w, None),
        })  # fmt: skip
    return out


async def download(http: httpx2.AsyncClient, url: str, size: int) -> None:
    """GET `url`, streamed; fails unless exactly `size` bytes came."""
    got = 0
    async with http.stream("GET", url) as response:
        response.raise_for_status()
        async for chunk in response.aiter_bytes(MIB):
            got += len(chunk)
    if got != size:
        raise RuntimeError(f"downloaded {got} bytes, not {size}")


async def url_phase(
    storage: StorageClient,
    s3: Any,
    http: httpx2.AsyncClient,
    run: StorageWorkerRun,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Large puts and gets by presigned URL through the worker vs the SDK, per size (one key
    per size and mode, overwritten: moto keeps every object in memory)."""
    n, w, out = args.url_iterations, min(args.warmup, 1), {}
    for mib in args.url_sizes_mib:
        size, key = mib * MIB, f"url/{mib}.bin"
        label, data = size_label(size), os.urandom(size)
        print(f"by URL {label}", file=sys.stderr)

        async def worker_put(_i: int, key: str = key, data: bytes = data) -> None:
            signed = await storage.presign(key, "PUT", backend="s3", tenant=TENANT)
            (await http.put(signed.url, content=data, headers=signed.headers)).raise_for_status()

        async def worker_get(_i: int, key: str = key, size: int = size) -> None:
            answer = await storage.get(key, delivery="url", backend="s3", tenant=TENANT)
            assert answer.url is not None
            await download(http, answer.url, size)

        async def direct_put(_i: int, key: str = key, data: bytes = data) -> None:
            await s3.put_object(Bucket=run.bucket, Key=f"direct/{key}", Body=data)

        async def direct_get(_i: int, key: str = key, size: int = size) -> None:
            answer = await s3.get_object(Bucket=run.bucket, Key=f"direct/{key}")
            got = 0
            async with answer["Body"] as body:
                async for chunk in body.iter_chunks(MIB):
                    got += len(chunk)
            if got != size:
                raise RuntimeError(f"downloaded {got} bytes, not {size}")

        out[label] = with_ratios({
            "worker_put": await timed(worker_put, size, n, w, run.cpu),
            "direct_put": await timed(direct_put, size, n, w, None),
            "worker_get": await timed(worker_get, size, n, w, run.cpu),
            "direct_get": await timed(direct_get, size, n, w, None),
        })  # fmt: skip
    return out


async def one_copy(
    storage: StorageClient, run: StorageWorkerRun, source: str, target: str, expected: str
) -> dict[str, Any]:
    """Copy `local` `source` to `target` (`backend/key`); wall, CPU, memory, progress."""
    backend, key = target.split("/", 1)
    baseline, reset = run.rss_mb(), run.reset_peak()
    cpu_before, started = run.cpu(), time.perf_counter()
    progress, completed = 0, None
    stream = storage.copy_stream(source, key, source_backend="local", backend=backend,
                                 tenant=TENANT)  # fmt: skip
    async for event in stream:
        if isinstance(event, StorageProgress):
            progress += 1
        elif isinstance(event, CopyCompleted):
            completed = event
    wall, cpu = time.perf_counter() - started, run.cpu() - cpu_before
    peak = run.peak_mb()
    if completed is None:
        raise RuntimeError("the copy ended without its completed reply")
    size = completed.object.size
    checksum = completed.object.checksum
    return {
        "bytes": size,
        "wall_s": wall,
        "mib_per_s": size / MIB / wall,
        "worker_cpu_s": cpu,
        "worker_cpu_s_per_gib": cpu * 1024 * MIB / size,
        "rss_after_warmup_mb": baseline,
        "peak_rss_mb": peak,
        "rss_growth_mb": peak - baseline,
        "peak_reset_after_warmup": reset,
        "progress_events": progress,
        "checksum_ok": checksum is not None and checksum.value == expected,
    }


async def copy_phase(
    storage: StorageClient, run: StorageWorkerRun, sources: dict[str, tuple[str, str]]
) -> dict[str, Any]:
    """Each copy (name → (source key, expected SHA-256)) after a warm-up copy to its target."""
    out: dict[str, Any] = {}
    for name, (source, expected) in sources.items():
        target = {"local_to_local2": "local2", "local_to_s3": "s3"}[name]
        print(f"copy {name}", file=sys.stderr)
        await storage.copy("copy/warm-up.bin", f"copy/warm-up-{uuid.uuid4().hex[:6]}.bin",
                           source_backend="local", backend=target, tenant=TENANT)  # fmt: skip
        out[name] = await one_copy(storage, run, source, f"{target}/copy/{name}.bin", expected)
    return out


async def write_sources(roots: Path, args: argparse.Namespace) -> dict[str, tuple[str, str]]:
    """The copies' sources in the `local` root: name → (key, SHA-256)."""
    local = roots / "local"
    await write_local_object(local, f"{SPACE}copy/warm-up.bin", WARM_UP_MIB * MIB, 1)
    sources: dict[str, tuple[str, str]] = {}
    for name, mib, seed in (("local_to_local2", args.copy_mib, 2),
                            ("local_to_s3", args.s3_copy_mib, 3)):  # fmt: skip
        if mib:
            key = f"copy/{name}-source.bin"
            stored = await write_local_object(local, SPACE + key, mib * MIB, seed)
            sources[name] = (key, stored.sha256 or "")
    return sources


async def guarded(results: dict[str, Any], name: str, phase: Awaitable[dict[str, Any]]) -> None:
    """Run one phase into `results[name]`; a failure is recorded, and the next phase runs."""
    try:
        results[name] = await phase
    except Exception as exc:
        results.setdefault("phase_errors", {})[name] = f"{type(exc).__name__}: {exc}"[:500]
        print(f"phase {name} failed: {results['phase_errors'][name]}", file=sys.stderr)


async def bench(args: argparse.Namespace, bootstrap: str, results: dict[str, Any]) -> None:
    """Every phase, into `results`."""
    roots = Path(tempfile.mkdtemp(prefix="storage-bench-"))
    try:
        moto = start_moto()
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        print("writing the copy sources", file=sys.stderr)
        sources = await write_sources(roots, args)
        async with (
            admin_client(moto) as s3,
            httpx2.AsyncClient(timeout=120) as http,
        ):
            await s3.create_bucket(Bucket=bucket)
            async with StorageWorkerRun(bootstrap, moto, bucket, roots) as run:
                client = StorageClient(bootstrap, request_topic=run.request_topic,
                                       reply_topic=run.reply_topic)  # fmt: skip
                async with client as storage:
                    worker: dict[str, Any] = {"rss_start_mb": run.rss_mb(), "log": str(run.log)}
                    results["worker"] = worker
                    await guarded(results, "inline", inline_phase(storage, s3, run, args))
                    await guarded(results, "url", url_phase(storage, s3, http, run, args))
                    worker["rss_before_copies_mb"] = run.rss_mb()
                    worker["peak_rss_before_copies_mb"] = run.peak_mb()
                    await guarded(results, "copy", copy_phase(storage, run, sources))
                    worker["rss_end_mb"] = run.rss_mb()
    finally:
        shutil.rmtree(roots, ignore_errors=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options (`--quick` sets smaller defaults; explicit options win)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK}")
    p.add_argument("--iterations", type=int, default=50, help="measured inline operations")
    p.add_argument("--warmup", type=int, default=5, help="unmeasured operations before each")
    p.add_argument("--url-iterations", type=int, default=5, help="measured operations by URL")
    p.add_argument("--url-sizes-mib", type=int, nargs="*", default=[8, 64],
                   help="object sizes moved by URL (MiB)")  # fmt: skip
    p.add_argument("--copy-mib", type=int, default=1024, help="local → local2 copy (0: none)")
    p.add_argument("--s3-copy-mib", type=int, default=256, help="local → s3 copy (0: none)")
    p.add_argument("--out", type=Path, default=None,
                   help="the JSON report (default .bench/storage-bench-<time>.json)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=1200.0, help="abort the bench after, s")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    if args.iterations < 1 or args.url_iterations < 1 or args.warmup < 0:
        p.error("--iterations and --url-iterations are at least 1, --warmup at least 0")
    return args


def main() -> None:
    """Run the bench; print and write the report (exit 0 even when a phase failed)."""
    args = parse_args(sys.argv[1:])
    command = shlex.join([sys.executable, "-m", "tests.bench.storage_bench", *sys.argv[1:]])
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_path = args.out or ROOT / ".bench" / f"storage-bench-{stamp}.json"
    results: dict[str, Any] = {"command": command, "args": vars(args), "started": stamp,
                               "machine_before": machine()}  # fmt: skip
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
