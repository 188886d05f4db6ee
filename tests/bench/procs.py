"""The benchmark's processes: the fake OpenAI server, the worker(s), Kafka; small HTTP helpers.

Every process is started through `spawn`, dies with the bench (PR_SET_PDEATHSIG) and is
stopped by `cleanup`.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PROCS: list[subprocess.Popen[bytes]] = []


def _die_with_parent() -> None:  # in the child before exec: SIGKILL it if the bench dies
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(
    cmd: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None, stdout: Any = None,
    stderr: Any = None,
) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start a child process that is killed if the bench dies."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=stdout, stderr=stderr,
                            preexec_fn=_die_with_parent)  # fmt: skip
    PROCS.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM `proc`; SIGKILL it if it is still alive after `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def cleanup() -> None:
    """Stop every process this bench started."""
    for proc in PROCS:
        if proc.poll() is None:
            proc.terminate()
    for proc in PROCS:
        stop(proc, 8)


def raise_fd_limit() -> None:
    """Lift this process's (and so its children's) open-file limit to the hard limit:
    thousands of concurrent streams need as many sockets in the worker and the fake."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def http_json(url: str, payload: dict[str, Any] | None = None) -> Any:
    """GET (or POST `payload` to) `url`; the decoded JSON body, or None if nothing answered."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # /health answers 503 until ready
        return json.loads(exc.read() or b"null")
    except (OSError, ValueError):
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Fake:
    """The fake OpenAI server process and its control endpoints."""

    url: str
    pid: int

    @classmethod
    def start(cls) -> Fake:
        """Start `tests.fakes.openai_server` and read its port.

        Raises:
            RuntimeError: it did not print a port within 30 s.
        """
        proc = spawn([sys.executable, "-m", "tests.fakes.openai_server"], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline().decode().strip() if ready else ""
        if not line.isdigit():
            raise RuntimeError(f"the fake OpenAI server did not print its port (got {line!r})")
        return cls(f"http://127.0.0.1:{line}", proc.pid)

    def scenario(self, tokens: int, ttft: float, token_rate: float) -> None:
        """Make every model stream `tokens` tokens after `ttft` s, at `token_rate` tokens/s.

        Raises:
            RuntimeError: the fake did not accept it.
        """
        spec = {"tokens": tokens, "first_token_delay": ttft, "token_delay": 1.0 / token_rate}
        if http_json(f"{self.url}/_scenarios", {"*": spec}) is None:
            raise RuntimeError("the fake OpenAI server refused the scenario")

    def reset_stats(self) -> None:
        """Start a new window of chat calls, connections and peak concurrent streams."""
        http_json(f"{self.url}/_stats", {})

    def stats(self) -> dict[str, int]:
        """The window's `calls`, `connections` (that carried them), `new_connections`,
        `active_streams` and `peak_streams`."""
        return http_json(f"{self.url}/_stats") or {}


def connection_stats(stats: dict[str, int]) -> dict[str, Any]:
    """The fake's window as report keys: chat calls per upstream TCP connection."""
    calls, used = stats.get("calls", 0), stats.get("connections", 0)
    return {
        "upstream_calls": calls,
        "upstream_connections": used,
        "upstream_new_connections": stats.get("new_connections"),
        "calls_per_connection": calls / used if used else None,
    }


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
    """The process's peak resident set (VmHWM) in MB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


@dataclass(frozen=True)
class WorkerBuild:
    """Which worker to run: this tree's, or a baseline revision's from its own venv."""

    label: str
    python: str
    cwd: Path


CURRENT = WorkerBuild("current", sys.executable, ROOT)


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    health_url: str
    log: Path


def start_worker(
    build: WorkerBuild, bootstrap: str, fake: Fake, tag: str, *, max_in_flight: int,
    partitions: int,
) -> WorkerProcess:  # fmt: skip
    """Start `python -m llm_worker` of `build` on the topics `bench-<tag>.llm.*`."""
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env = {**inherited, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "OPENAI_BASE_URL": f"{fake.url}/v1",
           "OPENAI_API_KEY": "bench", "LLM_WORKER_REQUEST_TOPIC": f"bench-{tag}.llm.requests",
           "LLM_WORKER_DEFAULT_REPLY_TOPIC": f"bench-{tag}.llm.results",
           "LLM_WORKER_GROUP_ID": f"bench-{tag}", "LLM_WORKER_HTTP_PORT": str(port),
           "LLM_WORKER_MAX_IN_FLIGHT": str(max_in_flight), "LLM_WORKER_GRACE_PERIOD": "2",
           "LLM_WORKER_TOPIC_PARTITIONS": str(partitions),
           "LLM_WORKER_LOG_LEVEL": "WARNING"}  # fmt: skip
    log_path = Path(tempfile.gettempdir()) / f"llm-bench-worker-{build.label}-{tag}.log"
    with log_path.open("wb") as log:
        proc = spawn([build.python, "-m", "llm_worker"], cwd=build.cwd, env=env, stdout=log,
                     stderr=log)  # fmt: skip
    return WorkerProcess(proc, f"http://127.0.0.1:{port}/health", log_path)
