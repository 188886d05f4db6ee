"""Composition root of the mcp_worker: `create_app(settings)` wires everything, with no I/O
beyond reading the registry file."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from faststream.asgi import AsgiFastStream
from prometheus_client import CollectorRegistry

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman.contracts.mcp import ApiChanged, CancelRequest, ToolApproval, ToolChanged
from ferryman_runtime.cancellation import CancelBoard
from ferryman_runtime.config_watch import ConfigWatcher
from ferryman_runtime.control import ControlReader
from ferryman_runtime.health_events import publish_health
from ferryman_runtime.metric_labels import LabelBudget
from ferryman_runtime.resilience import Breakers
from ferryman_runtime.upstreams.health import HealthMonitor, UpstreamRef
from ferryman_runtime.upstreams.stats import StatsBoard, UpstreamStatsCollector
from ferryman_runtime.usage import UsageRecorder
from ferryman_runtime.worker import Worker
from mcp_worker.catalog.api_changes import ApiChanges
from mcp_worker.catalog.catalog import Catalog
from mcp_worker.catalog.catalog_topic import CATALOG_TOPIC_CONFIG
from mcp_worker.catalog.discovery import Discovery
from mcp_worker.catalog.persisted import read_catalog
from mcp_worker.contract import MCP_REQUESTS, McpRequests
from mcp_worker.control import control_handlers
from mcp_worker.execution.audit import Auditor
from mcp_worker.execution.cache import ResultCache
from mcp_worker.execution.context import Runtime
from mcp_worker.execution.limits import Limits
from mcp_worker.execution.rate_limits import RateLimits
from mcp_worker.execution.service import McpService, server_status
from mcp_worker.metrics import FleetCollector, McpMetrics
from mcp_worker.openapi.backend import ApiLimits
from mcp_worker.registry import Registry, parse_registry
from mcp_worker.servers.fleet import Fleet
from mcp_worker.servers.provisioning import Provisioner
from mcp_worker.servers.sandbox_launch import SandboxPolicy
from mcp_worker.servers.session import NotificationKind
from mcp_worker.settings import McpWorkerSettings
from mcp_worker.status import worker_details

logger = logging.getLogger(__name__)

_NAME = "mcp_worker"


class McpWorker:
    """The mcp_worker: the shared `Worker` around the MCP service, its servers, catalog,
    cancels, audit and health.

    Args:
        settings: the worker's settings.
        registry: where metrics go.
        environ: where credential references resolve (default: the process environment).

    Raises:
        RegistryError: the registry file is invalid (the worker refuses to start).
    """

    def __init__(
        self,
        settings: McpWorkerSettings,
        *,
        registry: CollectorRegistry,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._settings = settings
        self.metrics = McpMetrics(
            registry,
            LabelBudget(self._configured_tenants, max_dynamic=settings.metrics_max_tenants),
        )
        self.breakers = Breakers(
            registry,
            fail_max=settings.breaker_fail_max,
            reset_timeout=settings.breaker_reset_timeout,
        )
        self.stats = StatsBoard()
        registry.register(UpstreamStatsCollector(self.stats))
        self.catalog = Catalog()
        base_dir = settings.registry_file.parent if settings.registry_file else Path()
        self.rate_limits = RateLimits(
            lambda: self.worker.share(),
            on_wait=lambda server: self.metrics.rate_limit_waits.labels(server).inc(),
            on_refused=self.metrics.quota_refused,
        )
        self.cache = ResultCache(settings.cache_max_entries)
        self.board = CancelBoard(settings.cancel_window)
        self.fleet = Fleet(
            breakers=self.breakers,
            stats=self.stats,
            provisioner=Provisioner(settings.packages_dir),
            sandbox=SandboxPolicy(bwrap=settings.sandbox_bwrap, prlimit=settings.sandbox_prlimit),
            on_list_changed=self._list_changed,
            on_crash=self._crashed,
            on_api_loaded=lambda name, old, backend: self.api_changes.loaded(name, old, backend),
            restart_delays=(settings.restart_base_delay, settings.restart_max_delay),
            environ=os.environ if environ is None else environ,
            base_dir=base_dir,
            api_limits=ApiLimits(settings.api_max_response_bytes, settings.api_cache_max_bytes),
        )
        self.auditor = Auditor(
            lambda: self.worker.publisher,
            settings.audit_topic,
            source=f"/ferryman/mcp-worker/{settings.instance_id}",
            redact=settings.audit_redact,
            record_arguments=settings.audit_arguments,
        )
        self.discovery = Discovery(
            self.catalog,
            self.fleet,
            publisher=lambda: self.worker.publisher if self._running else None,
            topic=settings.catalog_topic,
            source=f"/ferryman/mcp-worker/{settings.instance_id}",
            debounce=settings.list_changed_debounce,
            status=lambda name: server_status(self.fleet.get(name)),
            on_changed=self._tool_changed,
            connection=settings.kafka_connection(),
        )
        self.api_changes = ApiChanges(
            self.catalog,
            self.fleet,
            base_dir=base_dir,
            publish=self._api_changed,
            served_anew=self._served_anew,
        )
        self._running = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.watcher: ConfigWatcher[Registry] | None = None
        if settings.registry_file is not None:
            self.watcher = ConfigWatcher(
                settings.registry_file,
                lambda data: parse_registry(data, f"registry file {settings.registry_file}"),
                self._apply_registry,
                registry=registry,
                name="registry",
                interval=settings.registry_poll_interval,
            )
            self.watcher.load_initial()
        self.usage = UsageRecorder(
            lambda: self.worker.publisher,
            topic=settings.usage_topic,
            source=f"/ferryman/mcp-worker/{settings.instance_id}",
            service=_NAME,
            registry=registry,
            tenants=self.metrics.tenants,
        )
        self.service = McpService(self._runtime(), self.metrics, self.usage.record)
        self.monitor = HealthMonitor(
            upstreams=self._server_refs,
            stats=self.stats,
            circuits=self.breakers.state_of,
            publish=lambda report: publish_health(
                self.worker.publisher, settings.health_topic, report, source=self.worker.source
            ),
            service=_NAME,
            instance=settings.instance_id,
            config_version=lambda: self.watcher.version if self.watcher else None,
            probe_interval=settings.health_probe_interval,
            probe_timeout=settings.health_probe_timeout,
            report_interval=settings.health_report_interval,
            registry=registry,
        )
        self.worker = Worker(
            settings,
            name=_NAME,
            spec=MCP_REQUESTS,
            service=McpRequests(self.service),
            registry=registry,
            background=[self.monitor.run, self._control, self._lifecycle, self.usage.start]
            + ([self.watcher.run, self._watch_api_documents] if self.watcher is not None else []),
            on_stop=[self._stop],
            on_drained=[self.usage.stop],
            details=lambda: worker_details(self),
            extra_topics={
                settings.control_topic: {},
                settings.catalog_topic: CATALOG_TOPIC_CONFIG,
                settings.audit_topic: {},
                settings.usage_topic: {},
            },
        )
        registry.register(FleetCollector(self.fleet, self.cache, self.auditor))
        self.control: ControlReader | None = None

    def _runtime(self) -> Runtime:
        limits = Limits(
            max_argument_bytes=self._settings.max_argument_bytes,
            max_argument_depth=self._settings.max_argument_depth,
            max_output_bytes=self._settings.max_output_bytes,
            output_overflow=self._settings.output_overflow,
        )
        return Runtime(
            fleet=self.fleet,
            catalog=self.catalog,
            discovery=self.discovery,
            cache=self.cache,
            limits=limits,
            board=self.board,
            auditor=self.auditor,
            rate_limits=self.rate_limits,
        )

    def _configured_tenants(self) -> set[str]:
        """Tenants the registry names (not patterns): their metric labels always pass."""
        return {
            tenant
            for supervisor in self.fleet.supervisors.values()
            for tenant in supervisor.config.tenants
            if not any(c in tenant for c in "*?[")
        }

    def _apply_registry(self, registry: Registry, version: str) -> None:
        changed, removed = self.fleet.apply(registry)
        self.rate_limits.configure(registry)
        access = dict(registry.access)
        # Every record carries the access rules: when only they change, the records of the
        # unchanged servers are published again, so catalog readers (the LLM worker's tool
        # loop) stop describing what is now denied.
        republish = (
            [name for name in registry.servers if name not in changed]
            if access != self.catalog.access
            else []
        )
        self.catalog.access = access
        for name in removed:
            self.catalog.remove(name)
            self.cache.drop_server(name)
        for name in changed:
            self.catalog.register(name, registry.servers[name])
            self.cache.drop_server(name)
        logger.info(
            "registry version %s active: %d servers (%d added or changed, %d removed)",
            version,
            len(registry.servers),
            len(changed),
            len(removed),
        )
        if self._running:
            self._spawn(self._after_apply(changed, removed, republish))

    async def _after_apply(
        self, changed: list[str], removed: list[str], republish: list[str]
    ) -> None:
        """Provision, start eager servers and publish catalog records for a registry change."""
        for name in [*removed, *republish]:
            await self.discovery.publish(name)
        await asyncio.gather(*(self._bring_up(name) for name in changed))

    async def _bring_up(self, name: str) -> None:
        supervisor = self.fleet.get(name)
        if supervisor is None:
            return
        await self.fleet.provision(name)
        if supervisor.config.start == "eager" or supervisor.config.is_api:  # an API is cheap
            try:
                await self.discovery.refresh(name, supervisor.config.connect_timeout)
                return
            except Exception as exc:  # reported as the server's health, never a crash
                logger.warning("server %s did not start: %s", name, str(exc)[:300])
        await self.discovery.publish(name)

    def _list_changed(self, server: str, scope: str, kind: NotificationKind) -> None:
        logger.info("server %s (session %r) says its %s changed", server, scope or "*", kind)
        self.discovery.schedule(server, scope)

    def _crashed(self, server: str) -> None:
        supervisor = self.fleet.get(server)
        if supervisor is not None and supervisor.config.start == "eager" and self._running:
            self._spawn(self._restart(server))

    async def _restart(self, server: str) -> None:
        supervisor = self.fleet.get(server)
        if supervisor is None:
            return
        try:
            await supervisor.session(
                None, supervisor.backoff_remaining() + supervisor.config.connect_timeout
            )
        except Exception as exc:  # the next crash or call tries again
            logger.warning("server %s did not restart: %s", server, str(exc)[:300])

    def _served_anew(self, server: str) -> None:
        self.catalog.invalidate(server)
        self.cache.drop_server(server)
        if self._running:
            self._spawn(self._bring_up(server))

    async def _watch_api_documents(self) -> None:
        await self.api_changes.watch(self._settings.registry_poll_interval)

    async def _api_changed(self, change: ApiChanged) -> None:
        self.metrics.api_changes.labels(change.server, str(change.breaking).lower()).inc()
        await self.auditor.api_changed(change)

    async def _tool_changed(self, change: ToolChanged) -> None:
        self.metrics.tool_changes.labels(change.server, change.state).inc()
        await self.auditor.tool_changed(change)

    def _cancel(self, cancel: CancelRequest) -> None:
        if self.board.cancel((cancel.source, cancel.request_id), cancel.reason):
            logger.info("cancelled request %s", cancel.request_id)

    def _approve(self, approval: ToolApproval) -> None:
        if self.catalog.approve(approval.server, approval.tool, approval.definition_hash):
            logger.info("tool %s/%s approved", approval.server, approval.tool)
            self._spawn(self.discovery.publish(approval.server))

    async def _control(self) -> None:
        self.control = ControlReader(
            self.worker.connection,
            self._settings.control_topic,
            window=self._settings.cancel_window,
            handlers=control_handlers(self._cancel, self._approve),
            client_id=f"ferryman-mcp-worker-control-{self._settings.instance_id}",
        )
        await self.control.run()  # cancels and approvals keep flowing: it starts again itself

    async def _lifecycle(self) -> None:
        """Runs while the worker runs: recall the published catalog, bring up the servers."""
        records = {}
        for attempt in range(3):
            try:
                records = await read_catalog(
                    self.worker.connection,
                    self._settings.catalog_topic,
                    client_id=f"ferryman-mcp-worker-catalog-{self._settings.instance_id}",
                )
                break
            except LookupError as exc:
                # Without it, first sights become the baseline: a rug pull across this
                # restart would go unseen. Say so loudly.
                logger.error(
                    "the catalog topic could not be read back (attempt %d of 3): %s",
                    attempt + 1,
                    exc,
                )
        for record in records.values():
            self.catalog.seed(record)
        logger.info(
            "recalled the catalog of %d servers (%d tools) from %s",
            len(records),
            sum(len(r.entry.tools) for r in records.values()),
            self._settings.catalog_topic,
        )
        self.catalog.recalled.set()
        self._running = True
        await self._after_apply(self.fleet.names(), [], [])
        await asyncio.Event().wait()

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    async def _stop(self) -> None:
        self._running = False
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.discovery.close()
        await self.api_changes.close()
        await self.fleet.close()

    def _server_refs(self) -> list[UpstreamRef]:
        return [
            UpstreamRef(
                name=name,
                kind="mcp",
                labels={
                    "transport": supervisor.config.transport,
                    "protocol_version": supervisor.protocol_version or "",
                },
                probe=self._prober(name),
                probe_group=name,
            )
            for name, supervisor in sorted(self.fleet.supervisors.items())
        ]

    def _prober(self, name: str) -> Any:
        async def probe() -> None:
            supervisor = self.fleet.get(name)
            if supervisor is None:
                return
            failed = self.fleet.provisioning_errors.get(name)
            if failed is not None:
                raise FerrymanError(ErrorCode.UNAVAILABLE, f"provisioning failed: {failed}")
            if supervisor.state == "failed" or supervisor.breaker.state == "open":
                raise FerrymanError(ErrorCode.UNAVAILABLE, supervisor.last_error or "failed")
            scope = supervisor.live_scope()
            if scope is None:
                return  # not running (lazy): nothing to probe, and a probe starts nothing
            # A real listing, into the catalog: a definition changed without a
            # `list_changed` notification is caught here too.
            await self.discovery.refresh(name, supervisor.config.timeout, scope)

        return probe


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("background task failed: %r", task.exception())


def create_app(
    settings: McpWorkerSettings,
    *,
    registry: CollectorRegistry | None = None,
    environ: Mapping[str, str] | None = None,
) -> AsgiFastStream:
    """Build the mcp_worker's FastStream app (only the registry file is read before start).

    Raises:
        RegistryError: the registry file is invalid.
    """
    worker = McpWorker(settings, registry=registry or CollectorRegistry(), environ=environ)
    return worker.worker.app()
