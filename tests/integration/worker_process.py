"""A worker run as a real process (`python -m <module>`) with its HTTP port (`/health`,
`/metrics`), for tests that need a separate process: tracing flushed on SIGTERM, a real
Prometheus scraping it, a worker killed mid-run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass
class WorkerProcess:
    """`python -m <module>` with `env` on top of this process's environment (minus `OTEL_*`,
    so a test's tracing settings are its own), logging to `log`."""

    module: str
    env: dict[str, str]
    log: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env={**inherited, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}/health", timeout=1) as response:
                return bool(json.loads(response.read()).get("ready"))
        except OSError:
            return False

    async def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(self.ready):
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.module} not ready:\n{self.log.read_text()[-3000:]}")
            await asyncio.sleep(0.2)  # polling /health, not synchronizing on it

    async def stop(self) -> int:
        """SIGTERM (the worker drains and flushes), then its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, 60)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
