"""The worker's sandbox policy: every stdio server runs in the sandbox unless its entry says
`sandbox: none` (a warning is logged); where the sandbox cannot be built the server is
refused, never started unsandboxed behind the operator's back."""

from __future__ import annotations

import asyncio
import logging

from mcp_worker.registry import ServerConfig
from mcp_worker.servers.sandbox import (
    SandboxProfile,
    SandboxUnavailable,
    sandbox_profile,
    sandbox_support,
    sandboxed,
)
from mcp_worker.servers.transport import LaunchWrapper, StdioLaunch

logger = logging.getLogger(__name__)


class SandboxPolicy:
    """Builds the launch wrapper of each stdio server.

    Args:
        bwrap: the bubblewrap executable.
        prlimit: the prlimit executable.
    """

    def __init__(self, *, bwrap: str, prlimit: str) -> None:
        self._bwrap = bwrap
        self._prlimit = prlimit
        self._warned: set[str] = set()

    async def wrapper(
        self, name: str, config: ServerConfig, roots: list[str]
    ) -> LaunchWrapper | None:
        """The wrapper for the server's launch (None: HTTP, or explicitly unsandboxed).

        Args:
            name: the server's name.
            config: its registry entry.
            roots: folders its launch needs readable besides the defaults (a provisioned
                package's environment).

        Raises:
            SandboxUnavailable: the server must be sandboxed and the sandbox cannot be used.
        """
        if config.transport != "stdio":
            return None
        profile = sandbox_profile(config.sandbox)
        if profile is None:
            if name not in self._warned:
                self._warned.add(name)
                logger.warning("MCP server %s runs WITHOUT a sandbox (sandbox: none)", name)
            return None
        # The first check runs a sandboxed `true` (cached after): keep the loop free.
        support = await asyncio.to_thread(sandbox_support, self._bwrap, self._prlimit)
        if not support.available:
            raise SandboxUnavailable(
                f"server {name!r} needs a sandbox and none can be built here"
                f" ({support.reason}); install bubblewrap or set `sandbox: none` for it"
            )
        if roots:
            profile = profile.model_copy(update={"readable": [*profile.readable, *roots]})
        return _wrap(profile, support.bwrap, support.prlimit)


def _wrap(profile: SandboxProfile, bwrap: str, prlimit: str) -> LaunchWrapper:
    def wrap(launch: StdioLaunch) -> StdioLaunch:
        command, args, env = sandboxed(
            launch.command,
            launch.args,
            launch.env,
            launch.cwd,
            profile,
            bwrap=bwrap,
            prlimit=prlimit,
        )
        return StdioLaunch(command=command, args=args, env=env, cwd=launch.cwd)

    return wrap
