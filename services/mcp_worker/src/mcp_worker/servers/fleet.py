"""Every registered server's supervisor, kept in step with the registry file: servers added,
removed or changed while calls are in flight (a removed server's calls finish or fail
cleanly, then its processes stop); packages provisioned when a server is registered."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman_runtime.resilience import Breakers
from ferryman_runtime.upstreams.stats import StatsBoard
from mcp_worker.registry import Registry, RegistryError, ServerConfig
from mcp_worker.servers.provisioning import Provisioner, ProvisioningError
from mcp_worker.servers.sandbox_launch import SandboxPolicy
from mcp_worker.servers.session import Connector, NotificationKind
from mcp_worker.servers.supervisor import ServerSupervisor
from mcp_worker.servers.transport import transport_for

logger = logging.getLogger(__name__)


class Fleet:
    """The servers of the active registry.

    Args:
        breakers: one circuit per server.
        stats: passive stats per server.
        provisioner: installs package servers.
        sandbox: wraps stdio launches (or refuses them).
        on_list_changed: a session reported a changed list.
        on_crash: a server's session ended unexpectedly.
        on_removed: a server left the registry (after its sessions closed).
        restart_delays: see `ServerSupervisor`.
        environ: where credential references resolve.
    """

    def __init__(
        self,
        *,
        breakers: Breakers,
        stats: StatsBoard,
        provisioner: Provisioner,
        sandbox: SandboxPolicy,
        on_list_changed: Callable[[str, str, NotificationKind], None],
        on_crash: Callable[[str], None],
        restart_delays: tuple[float, float] = (0.5, 30.0),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._breakers = breakers
        self._stats = stats
        self._provisioner = provisioner
        self._sandbox = sandbox
        self._on_list_changed = on_list_changed
        self._on_crash = on_crash
        self._delays = restart_delays
        self._environ = os.environ if environ is None else environ
        self.supervisors: dict[str, ServerSupervisor] = {}
        self.package_versions: dict[str, str] = {}
        self.provisioning_errors: dict[str, str] = {}
        self._provisioned: dict[str, tuple[str, str]] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    def names(self) -> list[str]:
        """Registered server names."""
        return sorted(self.supervisors)

    def get(self, name: str) -> ServerSupervisor | None:
        """The supervisor of a registered server."""
        return self.supervisors.get(name)

    def apply(self, registry: Registry) -> tuple[list[str], list[str]]:
        """Make the fleet match `registry`; return (added or changed, removed) server names.

        A changed server gets a new supervisor (new sessions); the old one retires in the
        background once its in-flight calls end.
        """
        changed: list[str] = []
        removed: list[str] = []
        for name in list(self.supervisors):
            if name not in registry.servers:
                removed.append(name)
                self._retire(self.supervisors.pop(name))
        for name, config in registry.servers.items():
            current = self.supervisors.get(name)
            if current is not None and current.config == config:
                continue
            if current is not None:
                self._retire(current)
                self._provisioned.pop(name, None)
            self.supervisors[name] = self._supervisor(name, config)
            changed.append(name)
        return changed, removed

    def _supervisor(self, name: str, config: ServerConfig) -> ServerSupervisor:
        return ServerSupervisor(
            name,
            config,
            prepare=lambda: self._prepare(name, config),
            breaker=self._breakers.get(name),
            stats=self._stats.get(name),
            on_list_changed=self._on_list_changed,
            on_crash=self._on_crash,
            restart_delays=self._delays,
        )

    def _retire(self, supervisor: ServerSupervisor) -> None:
        async def retire() -> None:
            # In-flight calls hold slots: take them all, so they finish first (bounded).
            held = 0
            try:
                async with asyncio.timeout(supervisor.config.timeout + 5):
                    for _ in range(supervisor.config.max_concurrency):
                        await supervisor.limit.acquire()
                        held += 1
            except TimeoutError:
                logger.warning("server %s: in-flight calls outlived its removal", supervisor.name)
            finally:
                await supervisor.close()  # also when the worker stops meanwhile
            for _ in range(held):
                supervisor.limit.release()

        task = asyncio.create_task(retire(), name=f"mcp-retire-{supervisor.name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def provision(self, name: str) -> None:
        """Provision a package server now (at registration), recording the outcome as the
        server's health rather than raising."""
        supervisor = self.supervisors.get(name)
        if supervisor is None or supervisor.config.package is None:
            return
        with contextlib.suppress(FerrymanError):  # recorded as the server's health
            await self._provisioned_command(name, supervisor.config)

    async def _provisioned_command(self, name: str, config: ServerConfig) -> str | None:
        package = config.package
        if package is None:
            return None
        done = self._provisioned.get(name)
        if done is not None:
            return done[0]
        supervisor = self.supervisors.get(name)
        if supervisor is not None:
            supervisor.state = "provisioning"
        try:
            server = await self._provisioner.provision(package)
        except ProvisioningError as exc:
            self.provisioning_errors[name] = str(exc)[:500]
            if supervisor is not None:
                supervisor.state = "failed"
                supervisor.last_error = f"provisioning failed: {str(exc)[:300]}"
            raise FerrymanError(
                ErrorCode.UNAVAILABLE,
                f"server {name!r} could not be provisioned: {str(exc)[:300]}",
                retryable=False,
                upstream=name,
            ) from None
        self.provisioning_errors.pop(name, None)
        self.package_versions[name] = server.version
        self._provisioned[name] = (server.command, server.root)
        if supervisor is not None and supervisor.state == "provisioning":
            supervisor.state = "idle"
        return server.command

    async def _prepare(self, name: str, config: ServerConfig) -> Connector:
        command = await self._provisioned_command(name, config)
        extra_roots = [self._provisioned[name][1]] if name in self._provisioned else []
        wrap = await self._sandbox.wrapper(name, config, extra_roots)
        try:
            return transport_for(name, config, environ=self._environ, command=command, wrap=wrap)
        except RegistryError as exc:
            raise FerrymanError(
                ErrorCode.AUTH, f"server {name!r}: {exc}", retryable=False, upstream=name
            ) from None

    async def close(self) -> None:
        """Stop every server (and wait for retiring ones)."""
        supervisors = list(self.supervisors.values())
        self.supervisors.clear()
        await asyncio.gather(*(s.close() for s in supervisors), return_exceptions=True)
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)


def packages_dir(path: Path) -> Path:
    """The provisioning cache folder, created if missing."""
    path.mkdir(parents=True, exist_ok=True)
    return path
