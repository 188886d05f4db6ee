"""Running an installer as a subprocess with a deadline that takes its whole process tree
down: builds and install scripts it starts share its session and die with it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Completed:
    """A subprocess that ran to its end."""

    returncode: int
    stdout: bytes
    stderr: bytes


async def run_bounded(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, deadline: float
) -> Completed:
    """Run `argv` (no shell, stdin closed, output captured) until the event loop's clock
    reaches `deadline`.

    On expiry or cancellation the process group is killed before this returns.

    Raises:
        OSError: the executable cannot be started.
        TimeoutError: the deadline passed first.
    """
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
    )
    finished = False
    try:
        async with asyncio.timeout_at(deadline):
            stdout, stderr = await process.communicate()
        finished = True
    finally:
        if not finished:
            # Also when the leader already exited: its children may still hold the pipes.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            if process.returncode is None:
                await process.wait()
    return Completed(await process.wait(), stdout, stderr)
