"""Real escape attempts from a malicious stdio MCP server started through `sandboxed()`.

Each attempt (a secret from the environment, files outside its folders, a local port, a
fork bomb, 4 GiB of memory) must be blocked, and the server, or another sandboxed server
beside it, must still answer afterwards.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from mcp_worker.servers.sandbox import SandboxProfile, sandbox_support, sandboxed
from tests.mcp_servers import ROOT, TOOLBOX, filesystem_bin, time_server_bin

MALICIOUS = ROOT / "tests" / "fakes" / "mcp_servers" / "malicious.py"
CALL_TIMEOUT = 60.0
SERVER_TIMEOUT = 180.0
"""Bounds a server's whole life in a test (start, calls, stop)."""
SECRET_NAME = "FERRYMAN_SANDBOX_TEST_SECRET"
SECRET_VALUE = "s3cret-7f2a9c"
ALLOWED_NAME = "FERRYMAN_SANDBOX_TEST_ALLOWED"

SUPPORT = sandbox_support()
pytestmark = pytest.mark.skipif(not SUPPORT.available, reason=f"no sandbox: {SUPPORT.reason}")


@dataclass
class Folders:
    work: Path
    """The server's cwd and its one writable folder."""
    outside: Path
    """A folder it was not given, holding a secret file."""


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    work.chmod(0o777)  # as root, the server runs as host uid 65534
    (outside / "secret.txt").write_text(SECRET_VALUE)
    return Folders(work, outside)


@asynccontextmanager
async def sandboxed_client(
    command: str,
    args: list[str],
    profile: SandboxProfile,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    uid: int = 65534,
) -> AsyncIterator[Client]:
    wrapped, wrapped_args, wrapped_env = sandboxed(
        command,
        args,
        env or {},
        str(cwd) if cwd else None,
        profile,
        bwrap=SUPPORT.bwrap,
        prlimit=SUPPORT.prlimit,
        uid=uid,
    )
    params = StdioServerParameters(
        command=wrapped, args=wrapped_args, env=wrapped_env, cwd=str(cwd) if cwd else None
    )
    with anyio.fail_after(SERVER_TIMEOUT):
        async with Client(params, mode="legacy", read_timeout_seconds=CALL_TIMEOUT) as client:
            yield client


async def call(client: Client, tool: str, **arguments: object) -> str:
    with anyio.fail_after(CALL_TIMEOUT):
        result = await client.call_tool(tool, dict(arguments))
    text = "".join(getattr(block, "text", "") for block in result.content)
    return f"error: {text}" if result.is_error else text


@asynccontextmanager
async def malicious(folders: Folders, **profile: object) -> AsyncIterator[Client]:
    profile_ = SandboxProfile.model_validate(
        {"readable": [str(MALICIOUS.parent)], "writable": [str(folders.work)], **profile}
    )
    env = {SECRET_NAME: SECRET_VALUE, ALLOWED_NAME: "visible"}
    async with sandboxed_client(
        sys.executable, [str(MALICIOUS)], profile_, env=env, cwd=folders.work
    ) as client:
        yield client


@asynccontextmanager
async def bystander() -> AsyncIterator[Client]:
    """Another sandboxed server (the toolbox, under its own uid) that must keep serving."""
    profile = SandboxProfile(readable=[str(TOOLBOX.parent)])
    async with sandboxed_client(sys.executable, [str(TOOLBOX)], profile, uid=65533) as client:
        yield client


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


async def test_the_environment_holds_only_allow_listed_variables(
    folders: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_NAME, SECRET_VALUE)  # in the worker's environment too

    async with malicious(folders, env=[ALLOWED_NAME]) as server:
        assert (
            await call(server, "read_env", name=SECRET_NAME) == f"blocked: {SECRET_NAME} is not set"
        )
        assert await call(server, "read_env", name=ALLOWED_NAME) == "LEAKED: visible"
        assert await call(server, "read_env", name="HOME") == "LEAKED: /tmp"
        for process in ("1", "self", str(os.getpid())):
            environ = await call(server, "read_file", path=f"/proc/{process}/environ")
            assert SECRET_VALUE not in environ, process
        assert await call(server, "ok") == "alive"


async def test_files_outside_its_folders_can_be_neither_read_nor_written(
    folders: Folders,
) -> None:
    async with malicious(folders) as server:
        secret_file = folders.outside / "secret.txt"
        assert (await call(server, "read_file", path=str(secret_file))).startswith("blocked")
        for path in ("/etc/shadow", str(Path.home() / ".bashrc"), str(ROOT / "pyproject.toml")):
            assert (await call(server, "read_file", path=path)).startswith("blocked"), path
        for path in (folders.outside / "planted.txt", MALICIOUS.parent / "planted.py", "/planted"):
            assert (await call(server, "write_file", path=str(path), text="x")).startswith(
                "blocked"
            ), path
            assert not await anyio.Path(path).exists()
        assert (await call(server, "write_file", path="/usr/planted", text="x")).startswith(
            "blocked"
        )

        inside = folders.work / "result.txt"
        assert (
            await call(server, "write_file", path=str(inside), text="made") == f"ok: wrote {inside}"
        )
        assert await anyio.Path(inside).read_text() == "made"
        assert (await call(server, "write_file", path="/tmp/scratch", text="x")).startswith("ok")
        assert not await anyio.Path("/tmp/scratch").exists()  # its /tmp is its own
        assert (await call(server, "read_file", path=str(MALICIOUS))).startswith("LEAKED")
        assert await call(server, "ok") == "alive"


async def test_a_local_port_cannot_be_reached_without_network(
    folders: Folders, listener: int
) -> None:
    async with malicious(folders) as server:
        assert (await call(server, "connect", host="127.0.0.1", port=listener)).startswith(
            "blocked"
        )
        assert await call(server, "ok") == "alive"


async def test_with_network_allowed_the_local_port_is_reached(
    folders: Folders, listener: int
) -> None:
    async with malicious(folders, network=True) as server:
        reached = await call(server, "connect", host="127.0.0.1", port=listener)
        assert reached == f"ok: connected to 127.0.0.1:{listener}"


async def test_a_fork_bomb_stops_at_the_process_limit_and_others_keep_serving(
    folders: Folders,
) -> None:
    async with bystander() as other, malicious(folders, processes=32) as server:
        verdict = await call(server, "fork_bomb")

        assert verdict.startswith("blocked: started "), verdict
        started = int(verdict.split()[2])
        assert 0 < started < 32, verdict
        assert await call(server, "ok") == "alive"
        assert await call(other, "echo", text="still here") == "still here"


async def test_allocating_4_gib_fails_and_the_server_survives(folders: Folders) -> None:
    async with bystander() as other, malicious(folders) as server:
        verdict = await call(server, "allocate", mb=4096)

        assert verdict.startswith("blocked: MemoryError"), verdict
        assert int(verdict.split()[-2]) < 1024
        shared = await call(server, "allocate", mb=4096, shared=True)
        assert shared.startswith("blocked: "), shared  # the address-space backstop
        assert await call(server, "ok") == "alive"
        assert await call(other, "add", a=2, b=3) == "5"


async def test_a_cpu_limit_ends_a_runaway_server_and_others_keep_serving(
    folders: Folders, tmp_path: Path
) -> None:
    spinner = tmp_path / "spin.py"
    spinner.write_text("while True:\n    pass\n")
    profile = SandboxProfile(readable=[str(tmp_path)], cpu_seconds=1)
    command, args, env = sandboxed(
        sys.executable,
        [str(spinner)],
        {},
        None,
        profile,
        bwrap=SUPPORT.bwrap,
        prlimit=SUPPORT.prlimit,
    )

    async with bystander() as other:
        with anyio.fail_after(CALL_TIMEOUT):
            ended = await anyio.run_process([command, *args], env=env, check=False)
        assert ended.returncode != 0
        assert await call(other, "echo", text="after") == "after"


async def test_real_python_and_node_servers_run_inside(folders: Folders) -> None:
    async with sandboxed_client(
        str(time_server_bin()), ["--local-timezone=UTC"], SandboxProfile()
    ) as time:
        now = await call(time, "get_current_time", timezone="UTC")
        assert '"timezone": "UTC"' in now

    async with sandboxed_client(
        str(filesystem_bin()),
        [str(folders.work)],
        SandboxProfile(writable=[str(folders.work)]),
    ) as files:
        await call(files, "write_file", path=str(folders.work / "n.txt"), content="from node")
        assert (folders.work / "n.txt").read_text() == "from node"
        refused = await call(files, "read_text_file", path=str(folders.outside / "secret.txt"))
        assert refused.startswith("error: "), refused
        assert "denied" in refused.lower(), refused
        assert SECRET_VALUE not in refused


def test_support_reports_a_missing_bwrap() -> None:
    support = sandbox_support("/nonexistent/bwrap")

    assert not support.available
    assert "/nonexistent/bwrap" in support.reason


def test_support_is_checked_once() -> None:
    assert sandbox_support() is sandbox_support()
    assert os.path.isabs(SUPPORT.bwrap) or SUPPORT.bwrap == "bwrap"
