"""`make demo`: stream a chat through Kafka and the LLM worker, starting only what is missing.

Uses the real OpenAI API when OPENAI_API_KEY is set, otherwise the built-in
`mock/echo` model. Stops what it started (the local Kafka and the worker).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEALTH_PORT = int(os.environ.get("LLM_WORKER_HTTP_PORT", "8081"))


def _local_kafka():
    spec = importlib.util.spec_from_file_location(
        "local_kafka", ROOT / "tools/kafka/local_kafka.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wait_ready(worker: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit("the worker exited during startup; see the log above")
        try:
            url = f"http://127.0.0.1:{HEALTH_PORT}/health"
            with urllib.request.urlopen(url, timeout=1) as response:
                if json.loads(response.read()).get("ready"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the worker was not ready within {timeout:.0f}s")


def main() -> int:
    """Run the demo; return the exit code of the chat."""
    kafka = _local_kafka()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    started_kafka = False
    if not bootstrap:
        started_kafka = not kafka.is_answering()
        bootstrap = kafka.ensure_running()
    model = "openai/gpt-4o-mini" if os.environ.get("OPENAI_API_KEY") else "mock/echo"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "LLM_WORKER_HTTP_PORT": str(HEALTH_PORT),
        "LLM_WORKER_MOCK_TOKEN_DELAY_MS": os.environ.get("LLM_WORKER_MOCK_TOKEN_DELAY_MS", "60"),
        "LLM_WORKER_LOG_LEVEL": os.environ.get("LLM_WORKER_LOG_LEVEL", "WARNING"),
    }
    print(f"▶ Kafka at {bootstrap}; starting the LLM worker (model {model})", file=sys.stderr)
    worker = subprocess.Popen([sys.executable, "-m", "llm_worker"], env=env)
    try:
        _wait_ready(worker)
        prompt = "Ferryman carries requests across Kafka and streams every token back"
        print(f"▶ ferryman chat {prompt!r} --model {model}\n", file=sys.stderr)
        return subprocess.call(
            [
                sys.executable,
                "-m",
                "ferryman.cli",
                "chat",
                prompt,
                "--model",
                model,
                "--expires-in",
                "120",
                "-b",
                bootstrap,
            ],
            env=env,
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        if started_kafka:
            kafka.stop()
        print("▶ stopped what the demo started", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
