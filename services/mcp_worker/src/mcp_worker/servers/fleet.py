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
from mcp_worker.openapi.backend import ApiBackend, ApiLimits
from mcp_worker.openapi.session import ApiLoader
from mcp_worker.openapi.spec import ApiSpec
from mcp_worker.registry import Registry, RegistryError, ServerConfig
from mcp_worker.servers.provisioning import Provisioner, ProvisioningError
from mcp_worker.servers.sandbox_launch import SandboxPolicy
from mcp_worker.servers.session import McpSession, NotificationKind
from mcp_worker.servers.supervisor import ServerSupervisor
from mcp_worker.servers.tool_session import ToolSession
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
        on_api_loaded: an API entry's document was loaded (called with the document this
            name served before, if any, and the new backend).
        restart_delays: see `ServerSupervisor`.
        environ: where credential references resolve.
        base_dir: where an API's relative document path resolves (the registry's folder).
        api_limits: response and cache sizes of APIs.
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
        on_api_loaded: Callable[[str, ApiSpec | None, ApiBackend], None] = lambda *_: None,
        restart_delays: tuple[float, float] = (0.5, 30.0),
        environ: Mapping[str, str] | None = None,
        base_dir: Path = Path(),
        api_limits: ApiLimits | None = None,
    ) -> None:
        self._breakers = breakers
        self._stats = stats
        self._provisioner = provisioner
        self._sandbox = sandbox
        self._on_list_changed = on_list_changed
        self._on_crash = on_crash
        self._delays = restart_delays
        self._environ = os.environ if environ is None else environ
        self._on_api_loaded = on_api_loaded
        self._base_dir = base_dir
        self._api_limits = api_limits or ApiLimits()
        self._loaders: dict[ServerSupervisor, ApiLoader] = {}
        self.api_specs: dict[str, ApiSpec] = {}
        """The document each API name serves (kept across reloads, for the next report)."""
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

    def api_backend(self, name: str) -> ApiBackend | None:
        """The loaded API of a registered API entry (None: not an API, or not loaded yet)."""
        supervisor = self.supervisors.get(name)
        loader = self._loaders.get(supervisor) if supervisor is not None else None
        return loader.backend if loader is not None else None

    def reload(self, name: str) -> bool:
        """Serve the entry anew (its API document changed on disk); whether it is registered.
        The old supervisor retires as on a registry change."""
        current = self.supervisors.get(name)
        if current is None:
            return False
        self._retire(current)
        self.supervisors[name] = self._supervisor(name, current.config)
        return True

    def _api_loaded(self, name: str, backend: ApiBackend) -> None:
        previous = self.api_specs.get(name)
        self.api_specs[name] = backend.spec
        for warning in backend.warnings:
            logger.info("API %s: %s", name, warning)
        self._on_api_loaded(name, previous, backend)

    def _supervisor(self, name: str, config: ServerConfig) -> ServerSupervisor:
        loader: ApiLoader | None = None
        if config.is_api:
            loader = ApiLoader(
                name,
                config,
                base_dir=self._base_dir,
                limits=self._api_limits,
                environ=self._environ,
                on_loaded=lambda backend: self._api_loaded(name, backend),
            )
        supervisor = ServerSupervisor(
            name,
            config,
            prepare=lambda scope, on_list_changed: self._prepare(
                name, config, scope, on_list_changed, loader
            ),
            breaker=self._breakers.get(name),
            stats=self._stats.get(name),
            on_list_changed=self._on_list_changed,
            on_crash=self._on_crash,
            restart_delays=self._delays,
        )
        if loader is not None:
            self._loaders[supervisor] = loader
        return supervisor

    async def _close(self, supervisor: ServerSupervisor) -> None:
        await supervisor.close()
        loader = self._loaders.pop(supervisor, None)
        if loader is not None:
            await loader.close()

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
                await self._close(supervisor)  # also when the worker stops meanwhile
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

    async def _prepare(
        self,
        name: str,
        config: ServerConfig,
        scope: str,
        on_list_changed: Callable[[NotificationKind], None],
        loader: ApiLoader | None,
    ) -> ToolSession:
        if loader is not None:
            return await loader.session(scope)
        command = await self._provisioned_command(name, config)
        extra_roots = [self._provisioned[name][1]] if name in self._provisioned else []
        wrap = await self._sandbox.wrapper(name, config, extra_roots)
        try:
            connector = transport_for(
                name, config, environ=self._environ, command=command, wrap=wrap
            )
        except RegistryError as exc:
            raise FerrymanError(
                ErrorCode.AUTH, f"server {name!r}: {exc}", retryable=False, upstream=name
            ) from None
        return McpSession(
            name,
            connector,
            mode="legacy" if config.protocol == "legacy" else "auto",
            on_list_changed=on_list_changed,
        )

    async def close(self) -> None:
        """Stop every server (and wait for retiring ones)."""
        supervisors = list(self.supervisors.values())
        self.supervisors.clear()
        await asyncio.gather(*(self._close(s) for s in supervisors), return_exceptions=True)
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)


def packages_dir(path: Path) -> Path:
    """The provisioning cache folder, created if missing."""
    path.mkdir(parents=True, exist_ok=True)
    return path
