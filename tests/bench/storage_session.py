"""The storage bench's processes: a moto S3 server in its own process, and one
`python -m storage_worker` with a policy file naming three backends (two local roots and a
moto bucket) for the tenant `bench`, its CPU and memory read from /proc.

Both are started through `procs.spawn` (they die with the bench) and stopped at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Self

from tests.bench.procs import ROOT, free_port, http_json, spawn, stop
from tests.storage.s3_store import MOTO_ACCESS_KEY, MOTO_REGION, MOTO_SECRET_KEY

TENANT = "bench"
SPACE = "bench/"
"""The tenant's prefix on every backend."""
_TICKS = os.sysconf("SC_CLK_TCK")


def start_moto(startup_timeout: float = 30.0) -> str:
    """Start `python -m moto.server` as a process; its URL.

    Raises:
        RuntimeError: it did not accept connections within `startup_timeout` seconds.
    """
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = spawn(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + startup_timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto did not start on port {port}") from None
            time.sleep(0.05)  # polling a port that is not open yet


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` so far (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def memory_mib(pid: int, field: str) -> float:
    """A `Vm…` figure of /proc/<pid>/status (`VmRSS`, `VmHWM`) in MiB.

    Raises:
        LookupError: the field is not there.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"no {field} in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux `clear_refs` 5); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class StorageWorkerRun:
    """A started storage_worker (fresh topics `bench-<tag>.storage.*`); `async with`.

    Args:
        bootstrap: Kafka.
        moto: the moto server's URL (the bucket `bucket` must exist on it).
        bucket: the S3 backend's bucket.
        roots: the folder holding the local backends' roots (`local/`, `local2/`).
        log_level: the worker's.
    """

    def __init__(
        self, bootstrap: str, moto: str, bucket: str, roots: Path, *, log_level: str = "WARNING"
    ) -> None:
        self.bootstrap, self.moto, self.bucket, self.roots = bootstrap, moto, bucket, roots
        self.log_level = log_level
        self.tag = uuid.uuid4().hex[:8]
        self.prefix = f"bench-{self.tag}.storage"
        self.request_topic, self.reply_topic = f"{self.prefix}.requests", f"{self.prefix}.results"
        self.log = Path(tempfile.gettempdir()) / f"storage-bench-worker-{self.tag}.log"
        self.policy_file = roots / f"policy-{self.tag}.json"
        self.proc: Any = None
        self.health_url = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def policy(self) -> dict[str, Any]:
        """Two local roots and the moto bucket; the tenant's default is S3."""
        s3 = {"type": "s3", "bucket": self.bucket, "region": MOTO_REGION,
              "endpoint_url": self.moto, "access_key_id": "env:BENCH_S3_KEY_ID",
              "secret_access_key": "env:BENCH_S3_SECRET", "addressing_style": "path"}  # fmt: skip
        return {
            "backends": {
                "s3": s3,
                "local": {"type": "local", "root": str(self.roots / "local")},
                "local2": {"type": "local", "root": str(self.roots / "local2")},
            },
            "tenants": {
                TENANT: {
                    "default": "s3",
                    "spaces": {"s3": SPACE, "local": SPACE, "local2": SPACE},
                    "max_presign_seconds": 3600,
                }
            },
        }

    def _environment(self, port: int) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        settings = {"REQUEST_TOPIC": self.request_topic, "DEFAULT_REPLY_TOPIC": self.reply_topic,
                    "EVENTS_TOPIC": f"{self.prefix}.events",
                    "HEALTH_TOPIC": f"{self.prefix}.health", "GROUP_ID": f"bench-{self.tag}",
                    "INSTANCE_ID": f"bench-{self.tag}", "HTTP_PORT": str(port),
                    "POLICY_FILE": str(self.policy_file), "TOPIC_PARTITIONS": "1",
                    "LOCAL_ROOT": str(self.roots / "default"), "GRACE_PERIOD": "2",
                    "LOG_LEVEL": self.log_level}  # fmt: skip
        return {**inherited, "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                "BENCH_S3_KEY_ID": MOTO_ACCESS_KEY, "BENCH_S3_SECRET": MOTO_SECRET_KEY,
                **{f"STORAGE_WORKER_{k}": v for k, v in settings.items()}}  # fmt: skip

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        self.policy_file.write_text(json.dumps(self.policy()))
        port = free_port()
        self.health_url = f"http://127.0.0.1:{port}/health"
        with self.log.open("wb") as log:
            command = [sys.executable, "-m", "storage_worker"]
            self.proc = spawn(command, cwd=ROOT, env=self._environment(port), stdout=log,
                              stderr=log)  # fmt: skip
        deadline = time.monotonic() + 90
        while not ((await self.health()) or {}).get("ready"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the storage_worker did not get ready; see {self.log}")
            await asyncio.sleep(0.2)  # polling /health until the worker says ready

    async def __aexit__(self, *_exc: object) -> None:
        if self.proc is not None:
            await asyncio.to_thread(stop, self.proc)

    async def health(self) -> dict[str, Any]:
        """The worker's `/health` document ({} when it does not answer)."""
        return (await asyncio.to_thread(http_json, self.health_url)) or {}

    def cpu(self) -> float:
        """The worker's user + system CPU seconds so far."""
        return cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        """The worker's resident set now, MiB."""
        return memory_mib(self.pid, "VmRSS")

    def peak_mb(self) -> float:
        """The worker's peak resident set (since start or the last `reset_peak`), MiB."""
        return memory_mib(self.pid, "VmHWM")

    def reset_peak(self) -> bool:
        """Reset the worker's peak resident set to its RSS now; False if not allowed."""
        return reset_peak_rss(self.pid)
