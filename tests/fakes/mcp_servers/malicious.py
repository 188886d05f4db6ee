"""A malicious MCP server (SDK `MCPServer`, stdio) whose tools try to escape their sandbox.

    python tests/fakes/mcp_servers/malicious.py

Every tool returns one line: `blocked: <why>` when the attempt failed, `LEAKED: <what>` when
it got through, or `ok: <what>` for attempts that are meant to work (writing inside the
writable folder, connecting with the network allowed). The attempts are bounded so a
missing limit cannot take the machine down: the fork bomb stops at `FORK_CAP` processes
and cleans them up, allocation stops at the requested size.

The file imports nothing from the repository (it runs with only the venv and its own folder
visible).
"""

from __future__ import annotations

import mmap
import os
import socket

from mcp.server import MCPServer

FORK_CAP = 2000
CHUNK_MB = 64

app = MCPServer("malicious", version="1.0.0", log_level="WARNING")


@app.tool(structured_output=False)
def ok() -> str:
    """Answer `alive` (the server still serves)."""
    return "alive"


@app.tool(structured_output=False)
def read_env(name: str) -> str:
    """Read an environment variable."""
    value = os.environ.get(name)
    return f"blocked: {name} is not set" if value is None else f"LEAKED: {value}"


@app.tool(structured_output=False)
def read_file(path: str) -> str:
    """Read a file."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return f"LEAKED: {file.read(1000)}"
    except OSError as exc:
        return f"blocked: {type(exc).__name__}"


@app.tool(structured_output=False)
def write_file(path: str, text: str) -> str:
    """Write a file."""
    try:
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as exc:
        return f"blocked: {type(exc).__name__}"
    return f"ok: wrote {path}"


@app.tool(structured_output=False)
def connect(host: str, port: int) -> str:
    """Open a TCP connection."""
    try:
        with socket.create_connection((host, port), timeout=5):
            return f"ok: connected to {host}:{port}"
    except OSError as exc:
        return f"blocked: {type(exc).__name__}"


@app.tool(structured_output=False)
def fork_bomb() -> str:
    """Start processes until the system refuses (at most FORK_CAP), then end them all."""
    release_read, release_write = os.pipe()
    children: list[int] = []
    refusal = f"none within {FORK_CAP}"
    try:
        while len(children) < FORK_CAP:
            try:
                pid = os.fork()
            except OSError as exc:
                refusal = type(exc).__name__
                break
            if pid == 0:  # the child waits until the parent closes the pipe, then leaves
                os.close(release_write)
                os.read(release_read, 1)
                os._exit(0)
            children.append(pid)
    finally:
        os.close(release_write)
        for pid in children:
            os.waitpid(pid, 0)
        os.close(release_read)
    verdict = "blocked" if len(children) < FORK_CAP else "LEAKED"
    return f"{verdict}: started {len(children)} processes, then {refusal}"


@app.tool(structured_output=False)
def allocate(mb: int, shared: bool = False) -> str:
    """Allocate `mb` MiB in chunks and touch every page (private memory, or shared anonymous
    mappings, which a data-size limit does not count)."""
    chunks: list[bytearray | mmap.mmap] = []
    try:
        while len(chunks) * CHUNK_MB < mb:
            chunk = mmap.mmap(-1, CHUNK_MB << 20) if shared else bytearray(CHUNK_MB << 20)
            chunk[::4096] = b"\x01" * len(range(0, CHUNK_MB << 20, 4096))
            chunks.append(chunk)
    except (MemoryError, OSError) as exc:
        got = len(chunks) * CHUNK_MB
        return f"blocked: {type(exc).__name__} after {got} MiB"
    finally:
        for chunk in chunks:
            if isinstance(chunk, mmap.mmap):
                chunk.close()
        chunks.clear()
    return f"LEAKED: allocated {mb} MiB"


if __name__ == "__main__":
    app.run("stdio")
