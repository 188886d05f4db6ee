"""The mcp_worker's server lifecycle through the real Kafka on real server processes: crashes
and restarts, hot reload (added, changed, removed, invalid), per-tenant processes and no
leaked ones, eager start, restart backoff and the breaker, package servers, and third-party
servers over stdio and streamable HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from ferryman.codec import header_value
from ferryman.contracts.mcp import MCP_CATALOG_LIST_REQUESTED, MCP_PROGRESS
from ferryman_runtime.config_watch import content_version
from tests.integration.mcp_harness import TERMINAL, McpHarness, Reply, running_mcp_worker
from tests.mcp_servers import everything_bin, http_toolbox, toolbox_stdio

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FAILED = "ferryman.mcp.failed"
COMPLETED = "ferryman.mcp.tool.call.completed"


def toolbox_entry(**extra: Any) -> dict[str, Any]:
    command, args = toolbox_stdio()
    return {"command": command, "args": args, "sandbox": "none", **extra}


def logged_toolbox(log: Path, **extra: Any) -> dict[str, Any]:
    """A toolbox that appends `start <pid>` to `log` at every start."""
    return toolbox_entry(env={"TOOLBOX_START_LOG": str(log)}, **extra)


def write_registry(path: Path, servers: dict[str, Any]) -> str:
    """Replace the registry file atomically (a new inode, as a ConfigMap swap does); return
    the version the worker will report once it applied it."""
    data = json.dumps({"mcpServers": servers}).encode()
    staged = path.with_suffix(".tmp")
    staged.write_bytes(data)
    staged.replace(path)
    return content_version(data)


def started_pids(log: Path) -> list[int]:
    if not log.exists():
        return []
    return [int(line.split()[1]) for line in log.read_text().splitlines() if line]


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)  # poll interval of a bounded wait on a condition


async def reloaded(harness: McpHarness, version: str) -> None:
    watcher = harness.worker.watcher
    assert watcher is not None
    await wait_until(lambda: watcher.version == version, f"registry version {version}")


async def in_flight(harness: McpHarness, request_id: str) -> None:
    """Return once the call reported progress (the server is running it)."""

    def progressed(records: list[Any]) -> bool:
        return any(
            header_value(r.headers, "ce_correlationid") == request_id
            and header_value(r.headers, "ce_type") == MCP_PROGRESS
            for r in records
        )

    await harness.topic(harness.settings.default_reply_topic, progressed)


async def call_result(harness: McpHarness, server: str, tool: str, **options: Any) -> Reply:
    arguments = options.pop("arguments", None)
    return await harness.result(await harness.call(server, tool, arguments, **options))


async def pid_of(harness: McpHarness, server: str, tenant: str | None = None) -> int:
    reply = await call_result(harness, server, "pid", tenant=tenant, use_cache=False)
    assert reply.type == COMPLETED, reply.data
    return reply.data["structured_content"]["pid"]


def assert_failed(reply: Reply, code: str, *, retryable: bool) -> None:
    assert reply.type == FAILED, reply.data
    assert reply.data["error"]["code"] == code, reply.data
    assert reply.data["error"]["retryable"] is retryable, reply.data


def descendants() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def gone(pid: int) -> bool:
    """The process no longer exists (a zombie still does: it was not reaped)."""
    return not psutil.pid_exists(pid)


def live_sessions(harness: McpHarness) -> int:
    return sum(s.session_count for s in harness.worker.fleet.supervisors.values())


async def test_a_server_killed_mid_call_fails_the_call_and_restarts(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    log = tmp_path / "starts.log"
    registry = tmp_path / "servers.json"
    write_registry(registry, {"toolbox": logged_toolbox(log, retries=0)})
    async with running_mcp_worker(kafka_bootstrap, unique, registry) as harness:
        first = await pid_of(harness, "toolbox")
        slow = await harness.call("toolbox", "slow", {"seconds": 60, "steps": 60})
        await in_flight(harness, slow)

        os.kill(first, signal.SIGKILL)

        assert_failed(await harness.result(slow), "unavailable", retryable=True)
        supervisor = harness.worker.fleet.supervisors["toolbox"]
        await wait_until(lambda: supervisor.restarts == 1, "the crash to be counted")
        second = await pid_of(harness, "toolbox")
        assert second != first
        assert started_pids(log) == [first, second]

        crashed = await call_result(harness, "toolbox", "crash")

        assert_failed(crashed, "unavailable", retryable=True)
        await wait_until(lambda: supervisor.restarts == 2, "the second crash to be counted")
        third = await pid_of(harness, "toolbox")
        assert started_pids(log) == [first, second, third]
        await wait_until(lambda: gone(first) and gone(second), "the dead processes reaped")


async def test_a_read_only_call_cut_by_a_crash_is_retried_on_a_new_process(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    log = tmp_path / "starts.log"
    registry = tmp_path / "servers.json"
    write_registry(registry, {"toolbox": logged_toolbox(log)})  # retries: 1 (the default)
    async with running_mcp_worker(kafka_bootstrap, unique, registry) as harness:
        first = await pid_of(harness, "toolbox")
        slow = await harness.call("toolbox", "slow", {"seconds": 1, "steps": 4})
        await in_flight(harness, slow)

        os.kill(first, signal.SIGKILL)

        done = await harness.result(slow)
        assert done.type == COMPLETED, done.data
        assert done.data["content"] == [{"type": "text", "text": "done"}]
        assert harness.worker.fleet.supervisors["toolbox"].restarts == 1
        assert len(started_pids(log)) == 2


async def test_a_server_removed_while_a_call_runs_ends_it_cleanly_then_stops(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    registry = tmp_path / "servers.json"
    write_registry(registry, {"toolbox": toolbox_entry(), "other": toolbox_entry()})
    async with running_mcp_worker(kafka_bootstrap, unique, registry) as harness:
        pid = await pid_of(harness, "toolbox")
        slow = await harness.call("toolbox", "slow", {"seconds": 6, "steps": 12})
        await in_flight(harness, slow)

        await reloaded(harness, write_registry(registry, {"other": toolbox_entry()}))

        after = await call_result(harness, "toolbox", "echo", arguments={"text": "hi"})
        assert_failed(after, "not_found", retryable=False)
        assert not gone(pid), "the removed server stopped before its call ended"
        ended = await harness.result(slow)
        assert ended.type in TERMINAL
        if ended.type == FAILED:
            assert ended.data["error"]["code"] == "unavailable", ended.data
        else:
            assert ended.data["content"] == [{"type": "text", "text": "done"}]
        await wait_until(lambda: gone(pid), f"the removed server's process {pid} to end")
        catalog = await harness.result(await harness.send(MCP_CATALOG_LIST_REQUESTED, {}))
        assert [s["server"] for s in catalog.data["servers"]] == ["other"]
        assert (await call_result(harness, "other", "add", arguments={"a": 1, "b": 2})).type == (
            COMPLETED
        )


async def test_servers_added_by_reload_are_callable_and_changed_ones_get_new_sessions(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    registry = tmp_path / "servers.json"
    write_registry(registry, {"a": toolbox_entry(env={"MARK": "1"})})
    async with running_mcp_worker(kafka_bootstrap, unique, registry) as harness:
        missing = await call_result(harness, "b", "add", arguments={"a": 1, "b": 2})
        assert_failed(missing, "not_found", retryable=False)
        before = await pid_of(harness, "a")
        old = harness.worker.fleet.supervisors["a"]

        servers = {"a": toolbox_entry(env={"MARK": "2"}), "b": toolbox_entry()}
        await reloaded(harness, write_registry(registry, servers))

        added = await call_result(harness, "b", "add", arguments={"a": 1, "b": 2})
        assert added.type == COMPLETED, added.data
        assert added.data["structured_content"] == {"result": 3}
        assert harness.worker.fleet.supervisors["a"] is not old
        after = await pid_of(harness, "a")
        assert after != before
        assert psutil.Process(after).environ().get("MARK") == "2"
        await wait_until(lambda: gone(before), "the changed server's old process to end")
        assert old.state == "stopped"


async def test_an_invalid_registry_is_rejected_and_the_old_servers_keep_serving(
    kafka_bootstrap: str, unique: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ferryman_runtime.config_watch")
    registry = tmp_path / "servers.json"
    active = write_registry(registry, {"toolbox": toolbox_entry()})
    async with running_mcp_worker(kafka_bootstrap, unique, registry) as harness:

        def rejected() -> float:
            value = harness.metrics.get_sample_value(
                "ferryman_config_reloads_total", {"config": "registry", "outcome": "rejected"}
            )
            return value or 0.0

        assert rejected() == 0.0
        staged = registry.with_suffix(".tmp")
        staged.write_text("mcpServers: {toolbox: [unclosed\n")
        staged.replace(registry)
        await wait_until(lambda: rejected() == 1.0, "the bad YAML to be rejected")

        secret = "Bearer sk-inline-3c9f7e2a"
        inline = {"url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": secret}}
        write_registry(registry, {"toolbox": toolbox_entry(), "remote": inline})
        await wait_until(lambda: rejected() == 2.0, "the inline secret to be rejected")

        assert harness.worker.watcher is not None
        assert harness.worker.watcher.version == active
        assert sorted(harness.worker.fleet.supervisors) == ["toolbox"]
        served = await call_result(harness, "toolbox", "add", arguments={"a": 2, "b": 2})
        assert served.type == COMPLETED, served.data
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("not YAML or JSON" in e for e in errors), errors
        assert any("headers.Authorization carries a credential" in e for e in errors), errors
        assert secret not in caplog.text
        status = harness.worker.worker.health()["registry"]
        assert status["version"] == active
        assert "credential" in status["last_error"]


async def test_tenants_get_their_own_processes_and_none_outlive_the_worker(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    baseline = {p.pid for p in descendants()}
    registry = tmp_path / "servers.json"
    write_registry(registry, {"a": toolbox_entry(), "b": toolbox_entry()})

    def ours() -> list[psutil.Process]:
        return [p for p in descendants() if p.pid not in baseline]

    async def settled(what: str) -> None:
        # Every process the worker started is a live session, and no session is missing one.
        await wait_until(lambda: len(ours()) == live_sessions(harness), what)

    started: set[int] = set()
    async with running_mcp_worker(kafka_bootstrap, unique, registry) as harness:
        acme, globex = await pid_of(harness, "a", "acme"), await pid_of(harness, "a", "globex")
        assert acme != globex
        assert await pid_of(harness, "a", "acme") == acme
        counts = [
            (await call_result(harness, "a", "count", tenant=tenant)).data["content"][0]["text"]
            for tenant in ("acme", "acme", "globex")
        ]
        assert counts == ["1", "2", "1"]  # a per-process counter: globex's is its own
        b_acme = await pid_of(harness, "b", "acme")
        started |= {acme, globex, b_acme}
        await settled("one process per session")
        assert {acme, globex, b_acme} <= {p.pid for p in ours()}

        crashed = await call_result(harness, "a", "crash", tenant="acme")
        assert_failed(crashed, "unavailable", retryable=True)
        await wait_until(lambda: gone(acme), "the crashed process to be reaped")
        again = await pid_of(harness, "a", "acme")
        assert again not in (acme, globex)
        assert await pid_of(harness, "a", "globex") == globex
        started.add(again)
        await settled("the crashed process replaced, not leaked")

        await reloaded(harness, write_registry(registry, {"a": toolbox_entry()}))
        await wait_until(lambda: gone(b_acme), "the removed server's process to end")
        await settled("the removed server's processes gone")
        started |= {p.pid for p in ours()}

    assert ours() == []
    assert all(gone(pid) for pid in started), "a server process was left (or left a zombie)"


async def test_an_eager_server_starts_before_any_call_and_restarts_without_one(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    log = tmp_path / "starts.log"
    registry = tmp_path / "servers.json"
    write_registry(registry, {"toolbox": logged_toolbox(log, start="eager")})
    async with running_mcp_worker(kafka_bootstrap, unique, registry) as harness:
        supervisor = harness.worker.fleet.supervisors["toolbox"]
        await wait_until(lambda: supervisor.session_count == 1, "the eager start")

        def discovered(records: list[Any]) -> bool:
            return any(
                r.key == b"toolbox"
                and r.value is not None
                and json.loads(r.value)["entry"]["tools"]
                for r in records
            )

        await harness.topic(harness.settings.catalog_topic, discovered)
        [first] = started_pids(log)

        os.kill(first, signal.SIGKILL)

        await wait_until(lambda: len(started_pids(log)) == 2, "a restart without a call")
        await wait_until(lambda: supervisor.session_count == 1, "the restarted session")
        assert supervisor.restarts == 1
        assert gone(first)
        assert await pid_of(harness, "toolbox") == started_pids(log)[1]


async def test_a_server_that_exits_at_once_fails_calls_and_opens_its_circuit(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    registry = tmp_path / "servers.json"
    broken = {"command": sys.executable, "args": ["-c", "import sys; sys.exit(1)"]}
    write_registry(registry, {"broken": {**broken, "sandbox": "none"}, "toolbox": toolbox_entry()})
    settings = {"breaker_fail_max": 2, "restart_base_delay": 0.05, "restart_max_delay": 0.2}
    async with running_mcp_worker(kafka_bootstrap, unique, registry, **settings) as harness:
        replies = [await call_result(harness, "broken", "anything") for _ in range(3)]

        for reply in replies:
            # `unavailable`, not `timeout`: the exit is noticed, not waited out.
            assert_failed(reply, "unavailable", retryable=True)
        assert "could not be started" in replies[0].data["error"]["message"]
        assert "circuit open" in replies[-1].data["error"]["message"]
        health = harness.worker.worker.health()["servers"]["broken"]
        assert health["status"] == "unhealthy"
        assert health["circuit"] == "open"
        assert "could not be started" in health["last_error"]
        assert harness.worker.fleet.supervisors["broken"].failures_in_a_row >= 2
        served = await call_result(harness, "toolbox", "add", arguments={"a": 1, "b": 1})
        assert served.type == COMPLETED, served.data


@pytest.mark.timeout(300)
async def test_a_package_server_is_provisioned_and_a_missing_one_is_unhealthy(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    registry = tmp_path / "servers.json"
    time_server = {
        "package": {"source": "pypi", "name": "mcp-server-time", "version": "2026.10.19"},
        "args": ["--local-timezone", "UTC"],
        "sandbox": "none",
    }
    missing = {
        "package": {"source": "pypi", "name": "ferryman-test-no-such-package-4c1e", "version": "1"},
        "sandbox": "none",
    }
    write_registry(registry, {"time": time_server, "missing": missing})
    async with running_mcp_worker(kafka_bootstrap, unique, registry) as harness:
        now = await call_result(
            harness, "time", "get_current_time", arguments={"timezone": "UTC"}, timeout=120
        )
        assert now.type == COMPLETED, now.data
        assert "UTC" in now.data["content"][0]["text"]
        assert (tmp_path / "packages" / "pypi").is_dir()

        failed = await call_result(harness, "missing", "anything")
        assert_failed(failed, "unavailable", retryable=False)
        assert "could not be provisioned" in failed.data["error"]["message"]
        catalog = await harness.result(await harness.send(MCP_CATALOG_LIST_REQUESTED, {}))
        servers = {s["server"]: s for s in catalog.data["servers"]}
        assert servers["time"]["package_version"] == "2026.10.19"
        assert "get_current_time" in {t["name"] for t in servers["time"]["tools"]}
        assert servers["missing"]["status"] == "unhealthy"
        assert harness.worker.worker.health()["servers"]["missing"]["status"] == "unhealthy"
        assert "missing" in harness.worker.fleet.provisioning_errors


async def test_server_everything_over_stdio_and_the_toolbox_over_streamable_http(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    registry = tmp_path / "servers.json"
    async with http_toolbox() as url:
        everything = {"command": str(everything_bin()), "args": ["stdio"], "sandbox": "none"}
        write_registry(registry, {"everything": everything, "remote": {"url": url}})
        async with running_mcp_worker(kafka_bootstrap, unique, registry) as harness:
            echoed = await call_result(
                harness, "everything", "echo", arguments={"message": "hi"}, timeout=60
            )
            slow = await harness.replies(
                await harness.call("remote", "slow", {"seconds": 0.3, "steps": 3})
            )

            assert echoed.type == COMPLETED, echoed.data
            assert echoed.data["content"][0]["text"] == "Echo: hi"
            assert slow[-1].type == COMPLETED, slow[-1].data
            assert slow[-1].data["content"] == [{"type": "text", "text": "done"}]
            progress = [r.data["progress"] for r in slow if r.type == MCP_PROGRESS]
            # In order; one may be dropped by the worker's 20-a-second progress bound when a
            # loaded machine delivers two notifications together.
            assert progress
            assert progress == sorted(set(progress))
            assert set(progress) <= {1, 2, 3}
            assert harness.worker.fleet.supervisors["remote"].config.transport == (
                "streamable-http"
            )


async def test_a_finished_call_is_counted_and_records_one_usage_event(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    registry = tmp_path / "servers.json"
    write_registry(registry, {"toolbox": toolbox_entry()})
    async with running_mcp_worker(kafka_bootstrap, unique, registry) as harness:
        request_id = await harness.call(
            "toolbox", "add", {"a": 1, "b": 2}, tenant="acme", principal="alice"
        )
        reply = await harness.result(request_id)
        assert reply.type == COMPLETED, reply.data

        def mine(records: list[Any]) -> list[Any]:
            return [r for r in records if json.loads(r.value)["request_id"] == request_id]

        records = await harness.topic(harness.settings.usage_topic, lambda rs: bool(mine(rs)))
        labels = {"operation": "tool", "target": "toolbox", "outcome": "completed"}
        assert harness.metrics.get_sample_value("ferryman_requests_total", labels) == 1
        assert harness.metrics.get_sample_value("ferryman_upstream_calls_total", {
            "upstream": "toolbox", "outcome": "ok",
        }) == 1  # fmt: skip

    (record,) = mine(records)
    assert header_value(record.headers, "ce_type") == "ferryman.usage.recorded"
    event = json.loads(record.value)
    assert {k: event[k] for k in ("service", "tenant", "user", "operation", "target")} == {
        "service": "mcp_worker",
        "tenant": "acme",
        "user": "alice",
        "operation": "tool",
        "target": "toolbox",
    }
    assert (event["tool"], event["outcome"], event["bytes"]) == ("toolbox/add", "completed", 0)
    assert event["latency_seconds"] >= 0
