"""Where the tests' MCP servers live and how to start them.

The toolbox (`tests/fakes/mcp_servers/toolbox.py`) runs over stdio or, as a separate
process, over streamable HTTP or SSE. The third-party servers are installed by
`make setup` (`tools/setup_system.sh`): the npm ones under `tools/node/node_modules/.bin/`,
`mcp-server-time` as a dev dependency in the venv.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import IO, Literal

ROOT = Path(__file__).resolve().parent.parent
TOOLBOX = ROOT / "tests" / "fakes" / "mcp_servers" / "toolbox.py"
NODE_BIN = ROOT / "tools" / "node" / "node_modules" / ".bin"
START_TIMEOUT_SECONDS = 30.0


def toolbox_stdio() -> tuple[str, list[str]]:
    """The command and arguments that run the toolbox over stdio with this interpreter."""
    return sys.executable, [str(TOOLBOX)]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _installed(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{what} is not installed ({path} is missing): run `make setup`"
            " (tools/setup_system.sh installs it)"
        )
    return path


def everything_bin() -> Path:
    """The installed `@modelcontextprotocol/server-everything` bin.

    Raises:
        FileNotFoundError: It is not installed (run `make setup`).
    """
    return _installed(NODE_BIN / "mcp-server-everything", "server-everything")


def filesystem_bin() -> Path:
    """The installed `@modelcontextprotocol/server-filesystem` bin.

    Raises:
        FileNotFoundError: It is not installed (run `make setup`).
    """
    return _installed(NODE_BIN / "mcp-server-filesystem", "server-filesystem")


def time_server_bin() -> Path:
    """`mcp-server-time` from the venv this interpreter runs in.

    Raises:
        FileNotFoundError: It is not installed (run `make setup`).
    """
    return _installed(Path(sys.executable).parent / "mcp-server-time", "mcp-server-time")


async def _wait_accepting(
    port: int, process: asyncio.subprocess.Process, stderr: IO[bytes]
) -> None:
    async with asyncio.timeout(START_TIMEOUT_SECONDS):
        while True:
            if process.returncode is not None:
                stderr.seek(0)
                output = stderr.read().decode(errors="replace")[-2000:]
                raise RuntimeError(
                    f"the toolbox exited with {process.returncode} before listening on {port}:\n"
                    f"{output}"
                )
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)  # poll interval, bounded by the timeout above
                continue
            writer.close()
            await writer.wait_closed()
            return


@contextlib.asynccontextmanager
async def http_toolbox(
    transport: Literal["http", "sse"] = "http", env: Mapping[str, str] | None = None
) -> AsyncIterator[str]:
    """Run the toolbox as a subprocess over streamable HTTP (or SSE) on a free port.

    Yields the endpoint URL (`http://127.0.0.1:PORT/mcp`, or `…/sse`) once the port
    accepts connections; kills the process on exit.

    Raises:
        RuntimeError: The process exited before listening.
        TimeoutError: It did not listen within `START_TIMEOUT_SECONDS`.
    """
    port = free_port()
    command, args = toolbox_stdio()
    with tempfile.TemporaryFile() as stderr:
        process = await asyncio.create_subprocess_exec(
            command,
            *args,
            f"--{transport}",
            str(port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, **(env or {})},
        )
        try:
            await _wait_accepting(port, process, stderr)
            yield f"http://127.0.0.1:{port}/{'mcp' if transport == 'http' else 'sse'}"
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
