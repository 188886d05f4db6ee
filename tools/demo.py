"""`make demo`: stream a chat through Kafka and the LLM worker, call an MCP tool through
the mcp_worker (the time server, sandboxed where bubblewrap is installed), then store a
document with the storage_worker (its local backend), read it back and print the text its
`text` pipeline extracts, starting only what is missing.

Uses the real OpenAI API when OPENAI_API_KEY is set, otherwise the built-in
`mock/echo` model; the tool call needs no key and no network. Stops what it started (the
local Kafka and the workers).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEALTH_PORT = int(os.environ.get("LLM_WORKER_HTTP_PORT", "8081"))
MCP_HEALTH_PORT = int(os.environ.get("MCP_WORKER_HTTP_PORT", "8082"))
STORAGE_HEALTH_PORT = int(os.environ.get("STORAGE_WORKER_HTTP_PORT", "8083"))


def _local_kafka():
    spec = importlib.util.spec_from_file_location(
        "local_kafka", ROOT / "tools/kafka/local_kafka.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wait_ready(
    worker: subprocess.Popen[bytes], port: int = HEALTH_PORT, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit("the worker exited during startup; see the log above")
        try:
            url = f"http://127.0.0.1:{port}/health"
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
        code = subprocess.call(
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
        _stop(worker)
    try:
        return code or _tool_call(bootstrap, env) or _storage(bootstrap, env)
    finally:
        if started_kafka:
            kafka.stop()
        print("▶ stopped what the demo started", file=sys.stderr)


def _tool_call(bootstrap: str, env: dict[str, str]) -> int:
    """Start the mcp_worker on a registry with the time server and call one of its tools."""
    folder = Path(tempfile.mkdtemp(prefix="ferryman-demo-"))
    sandboxed = shutil.which("bwrap") is not None
    time_server = str(Path(sys.executable).parent / "mcp-server-time")
    entry: dict[str, object] = {"command": time_server, "args": ["--local-timezone", "UTC"]}
    if not sandboxed:
        entry["sandbox"] = "none"
        print("▶ bubblewrap is not installed: the time server runs unsandboxed", file=sys.stderr)
    registry = folder / "mcp-servers.json"
    registry.write_text(json.dumps({"mcpServers": {"time": entry}}))
    mcp_env = {
        **env,
        "MCP_WORKER_HTTP_PORT": str(MCP_HEALTH_PORT),
        "MCP_WORKER_REGISTRY_FILE": str(registry),
        "MCP_WORKER_PACKAGES_DIR": str(folder / "packages"),
        "MCP_WORKER_LOG_LEVEL": os.environ.get("MCP_WORKER_LOG_LEVEL", "WARNING"),
    }
    print("\n▶ starting the mcp_worker with the time server", file=sys.stderr)
    worker = subprocess.Popen([sys.executable, "-m", "mcp_worker"], env=mcp_env)
    try:
        _wait_ready(worker, MCP_HEALTH_PORT)
        call = ["tools", "call", "time", "get_current_time", "--args", '{"timezone": "UTC"}']
        print(f"▶ ferryman {' '.join(call)}\n", file=sys.stderr)
        return subprocess.call(
            [sys.executable, "-m", "ferryman.cli", *call, "--timeout", "60", "-b", bootstrap],
            env=mcp_env,
        )
    finally:
        _stop(worker)
        shutil.rmtree(folder, ignore_errors=True)


def _storage(bootstrap: str, env: dict[str, str]) -> int:
    """Start the storage_worker (local backend in a temporary folder), store a document, read
    it back and print the text its `text` pipeline extracts."""
    folder = Path(tempfile.mkdtemp(prefix="ferryman-demo-storage-"))
    document = folder / "welcome.md"
    document.write_text(
        "# Welcome\n\nStored through **Kafka** by the *storage_worker*.\n\n"
        "- extracted by its `text` pipeline\n- readable by the LLM worker as a `dataref`\n"
    )
    storage_env = {
        **env,
        "STORAGE_WORKER_HTTP_PORT": str(STORAGE_HEALTH_PORT),
        "STORAGE_WORKER_LOCAL_ROOT": str(folder / "objects"),
        "STORAGE_WORKER_LOG_LEVEL": os.environ.get("STORAGE_WORKER_LOG_LEVEL", "WARNING"),
    }
    print("\n▶ starting the storage_worker (local backend)", file=sys.stderr)
    worker = subprocess.Popen([sys.executable, "-m", "storage_worker"], env=storage_env)
    try:
        _wait_ready(worker, STORAGE_HEALTH_PORT)
        common = ["--tenant", "demo", "--timeout", "60", "-b", bootstrap]
        for step in (
            ["storage", "put", "docs/welcome.md", str(document), "--content-type", "text/markdown"],
            ["storage", "ls", "docs/"],
            ["storage", "get", "docs/welcome.md", "-o", "-"],
            ["storage", "process", "docs/welcome.md", "text", "--text"],
        ):
            print(f"\n▶ ferryman {' '.join(step)} --tenant demo\n", file=sys.stderr)
            code = subprocess.call(
                [sys.executable, "-m", "ferryman.cli", *step, *common], env=storage_env
            )
            if code:
                return code
        return 0
    finally:
        _stop(worker)
        shutil.rmtree(folder, ignore_errors=True)


def _stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        worker.kill()


if __name__ == "__main__":
    sys.exit(main())
