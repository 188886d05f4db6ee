"""The alert rules against the real workers: a real Prometheus scrapes `python -m llm_worker`
and `python -m mcp_worker` (their own `/metrics`, the `service` label kept by
`honor_labels`), evaluates deploy/prometheus/ferryman.rules.yml with its durations shortened,
and the injected faults must fire the matching alerts with the right labels:

- a provider answering 503 to every call → FerrymanUpstreamErrorRate, then
  FerrymanCircuitOpenLong (the circuit cycles open, half-open, open and never closes);
- an MCP server that crashes a moment after every start → McpServerRestartLoop;
- while both workers are up FerrymanWorkerDown stays quiet; killing the LLM worker fires it.

The recorded alert timeline is printed (`-s`) and written to the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ferryman.client import ChatFailedError, FerrymanClient
from ferryman.topics import ensure_topics
from tests.fakes.openai_server import FakeOpenAI, Scenario
from tests.integration.prometheus_harness import PrometheusServer, shorten_durations
from tests.integration.worker_process import WorkerProcess
from tests.mcp_servers import TOOLBOX, free_port

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "ferryman.rules.yml"

CRASH_AFTER_SECONDS = 1.5
"""How long the crashing MCP server lives once it can answer (long enough for the handshake,
so every start succeeds and every end is a crash)."""

CRASHING_SERVER = f"""
import os, runpy, sys, threading
import anyio, mcp.server.mcpserver  # the slow imports first: the lifetime counts from here
threading.Timer({CRASH_AFTER_SECONDS}, os._exit, (3,)).start()
sys.argv = [{str(TOOLBOX)!r}]
runpy.run_path({str(TOOLBOX)!r}, run_name="__main__")
"""

ALERT_TIMEOUT = 75.0
"""Upper bound for one alert to fire (the slowest, FerrymanCircuitOpenLong, needs its
shortened 45 s window of never-closed samples plus its `for:`)."""


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()


@pytest.fixture
async def provider_down() -> AsyncIterator[FakeOpenAI]:
    """The fake OpenAI-wire provider answering 503 to every chat call."""
    fake = FakeOpenAI(default=Scenario(status=503))
    await fake.start()
    yield fake
    await fake.stop()


def llm_worker(bootstrap: str, prefix: str, base_url: str, log: Path) -> WorkerProcess:
    port = free_port()
    return WorkerProcess(
        "llm_worker",
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "LLM_WORKER_REQUEST_TOPIC": f"{prefix}.llm.requests",
            "LLM_WORKER_DEFAULT_REPLY_TOPIC": f"{prefix}.llm.results",
            "LLM_WORKER_HEALTH_TOPIC": f"{prefix}.health",
            "LLM_WORKER_USAGE_TOPIC": f"{prefix}.usage",
            "LLM_WORKER_CONTROL_TOPIC": f"{prefix}.mcp.control",
            "LLM_WORKER_CATALOG_TOPIC": f"{prefix}.mcp.catalog",
            "LLM_WORKER_MCP_REQUEST_TOPIC": f"{prefix}.mcp.requests",
            "LLM_WORKER_TOOL_LOOP_TOPIC": f"{prefix}.llm.tool-loop.results",
            "LLM_WORKER_GROUP_ID": f"g-llm-{prefix}",
            "LLM_WORKER_INSTANCE_ID": f"llm-{prefix}",
            "LLM_WORKER_TOPIC_PARTITIONS": "2",
            "LLM_WORKER_HTTP_PORT": str(port),
            # One attempt per request, a circuit that opens after two failures and tries
            # again after two seconds: every trial fails, so it never closes.
            "LLM_WORKER_RETRY_MAX_ATTEMPTS": "1",
            "LLM_WORKER_BREAKER_FAIL_MAX": "2",
            "LLM_WORKER_BREAKER_RESET_TIMEOUT": "2",
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": base_url,
        },
        log,
        port,
    )


def mcp_worker(bootstrap: str, prefix: str, registry: Path, log: Path) -> WorkerProcess:
    port = free_port()
    return WorkerProcess(
        "mcp_worker",
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "MCP_WORKER_REQUEST_TOPIC": f"{prefix}.mcp.requests",
            "MCP_WORKER_DEFAULT_REPLY_TOPIC": f"{prefix}.mcp.results",
            "MCP_WORKER_CONTROL_TOPIC": f"{prefix}.mcp.control",
            "MCP_WORKER_CATALOG_TOPIC": f"{prefix}.mcp.catalog",
            "MCP_WORKER_AUDIT_TOPIC": f"{prefix}.mcp.audit",
            "MCP_WORKER_HEALTH_TOPIC": f"{prefix}.health",
            "MCP_WORKER_USAGE_TOPIC": f"{prefix}.usage",
            "MCP_WORKER_GROUP_ID": f"g-mcp-{prefix}",
            "MCP_WORKER_INSTANCE_ID": f"mcp-{prefix}",
            "MCP_WORKER_TOPIC_PARTITIONS": "2",
            "MCP_WORKER_REGISTRY_FILE": str(registry),
            "MCP_WORKER_PACKAGES_DIR": str(registry.parent / "packages"),
            "MCP_WORKER_HTTP_PORT": str(port),
            "MCP_WORKER_RESTART_BASE_DELAY": "0.5",
            "MCP_WORKER_RESTART_MAX_DELAY": "1",
        },
        log,
        port,
    )


@contextlib.asynccontextmanager
async def failing_chats(bootstrap: str, prefix: str) -> AsyncIterator[list[str]]:
    """Publishes chat requests for a model of the broken provider, two a second, while the
    block runs; yields the error codes of the failed replies as they come."""
    requests, replies = f"{prefix}.llm.requests", f"{prefix}.llm.results"
    await ensure_topics(bootstrap, [replies], partitions=2, replication_factor=1)
    codes: list[str] = []
    async with FerrymanClient(bootstrap, request_topic=requests, reply_topic=replies) as client:

        async def one() -> None:
            request = {"model": "openai/down", "messages": [{"role": "user", "content": "hi"}]}
            try:
                await client.chat(request, timeout=30)
            except ChatFailedError as failure:
                codes.append(failure.error.code)

        async def traffic() -> None:
            async with asyncio.TaskGroup() as group:
                while True:
                    group.create_task(one())
                    await asyncio.sleep(0.5)  # the request rate, not synchronization

        task = asyncio.create_task(traffic())
        try:
            yield codes
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _labels(alert: dict[str, Any]) -> dict[str, str]:
    return alert["labels"]


LLM_UPSTREAM = {"service": "llm_worker", "upstream": "openai/*"}
MCP_SERVER = {"service": "mcp_worker", "server": "crashing"}


@pytest.mark.timeout(240)
async def test_injected_faults_fire_the_matching_alerts(
    kafka_bootstrap: str,
    unique: str,
    tmp_path: Path,
    provider_down: FakeOpenAI,
    workers: list[WorkerProcess],
) -> None:
    prefix = f"t-{unique}"
    registry = tmp_path / "servers.json"
    crashing = {"command": sys.executable, "args": ["-c", CRASHING_SERVER], "sandbox": "none"}
    registry.write_text(json.dumps({"mcpServers": {"crashing": {**crashing, "start": "eager"}}}))
    llm = llm_worker(kafka_bootstrap, prefix, provider_down.base_url, tmp_path / "llm.log")
    mcp = mcp_worker(kafka_bootstrap, prefix, registry, tmp_path / "mcp.log")
    workers.extend([llm, mcp])
    for worker in workers:
        worker.start()
    await asyncio.gather(llm.wait_ready(), mcp.wait_ready())

    targets = {"llm_worker": [llm.address], "mcp_worker": [mcp.address]}
    rules = shorten_durations(RULES.read_text())
    prometheus_dir = tmp_path / "prometheus"
    prometheus_dir.mkdir()
    with PrometheusServer(prometheus_dir, targets=targets, rules=rules) as prometheus:

        async def wait(name: str, labels: dict[str, str]) -> dict[str, Any]:
            return await asyncio.to_thread(
                prometheus.wait_for_alert, name, labels, timeout=ALERT_TIMEOUT
            )

        try:
            # Prometheus scrapes its first targets a few seconds after start (its discovery
            # updates are throttled), so the shortened absence rules fire meanwhile.
            for service in targets:
                await asyncio.to_thread(prometheus.wait_until_scraped, service)
                await asyncio.to_thread(
                    prometheus.wait_until_quiet, "FerrymanServiceAbsent", {"service": service}
                )
            scraping_since = len(prometheus.timeline)

            async with failing_chats(kafka_bootstrap, prefix) as codes:
                restart_loop = await wait("McpServerRestartLoop", MCP_SERVER)
                circuit = await wait("FerrymanCircuitOpenLong", LLM_UPSTREAM)
                error_rate = await wait("FerrymanUpstreamErrorRate", LLM_UPSTREAM)
            while_up = prometheus.timeline[scraping_since:]

            llm.kill()
            down = await wait("FerrymanWorkerDown", {"service": "llm_worker"})
        finally:
            timeline = prometheus.timeline_text()
            print(f"\nalert timeline (seconds since Prometheus was ready):\n{timeline}")
            (tmp_path / "alert_timeline.txt").write_text(timeline + "\n")

    assert set(codes) == {"unavailable"}, codes
    assert _labels(restart_loop) | MCP_SERVER == _labels(restart_loop)
    assert _labels(restart_loop)["severity"] == "warning"
    assert _labels(circuit) | LLM_UPSTREAM == _labels(circuit)
    assert _labels(circuit)["severity"] == "warning"
    quiet = ("FerrymanWorkerDown", "FerrymanServiceAbsent")
    assert [t for t in while_up if t.alert in quiet and t.labels["service"] in targets] == []
    assert _labels(down)["instance"] == llm.address
    assert _labels(down)["severity"] == "critical"
    # The storage worker is never scraped: its absence alert fires, as it should.
    assert any(
        t.alert == "FerrymanServiceAbsent" and t.labels["service"] == "storage_worker"
        for t in prometheus.timeline
    )
    assert _labels(error_rate) | LLM_UPSTREAM == _labels(error_rate)
    assert _labels(error_rate)["severity"] == "warning"
