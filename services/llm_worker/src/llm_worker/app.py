"""Composition root of the LLM worker: `create_app(settings)` wires everything, with no I/O."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from faststream.asgi import AsgiFastStream
from prometheus_client import CollectorRegistry

from ferryman.codec import IncomingEvent
from ferryman.contracts import LLM_CACHE_INVALIDATE_REQUESTED, CacheInvalidation, FerrymanError
from ferryman.contracts.mcp import MCP_CANCEL_REQUESTED, CancelRequest
from ferryman_runtime.cancellation import CancelBoard
from ferryman_runtime.catalog_view import CatalogView
from ferryman_runtime.config_watch import ConfigWatcher, content_version
from ferryman_runtime.control import ControlReader
from ferryman_runtime.health_events import publish_health
from ferryman_runtime.metric_labels import LabelBudget
from ferryman_runtime.pricing import PriceTable
from ferryman_runtime.resilience import Breakers, RetryPolicy
from ferryman_runtime.upstreams.cooldowns import Cooldowns
from ferryman_runtime.upstreams.health import HealthMonitor, UpstreamRef
from ferryman_runtime.upstreams.stats import UpstreamStatsCollector
from ferryman_runtime.usage import UsageRecorder
from ferryman_runtime.worker import Worker
from llm_worker.caching.wiring import build_response_cache, event_time
from llm_worker.chat.service import ChatService, Resilience
from llm_worker.chat.stream_guard import StreamTimeouts
from llm_worker.contract import CHAT_REQUESTS, ChatRequests
from llm_worker.datarefs.wiring import storage_resolver
from llm_worker.metrics import MAX_MODELS, LlmMetrics, UsageModels, watch_gemini_caches
from llm_worker.providers.factory import build_providers, dedicated_client
from llm_worker.providers.port import ChatModel
from llm_worker.providers.resolver import ModelResolver
from llm_worker.routing.capabilities import CapabilityTable
from llm_worker.routing.config import Deployment, RoutingConfig
from llm_worker.routing.table import RoutingTable, build_table
from llm_worker.settings import LlmWorkerSettings
from llm_worker.tool_loop.dispatch import TOOL_LOOP_SOURCE, ToolDispatcher
from llm_worker.tool_loop.journal import LoopJournal
from llm_worker.tool_loop.loop import ToolLoop
from llm_worker.tool_loop.tool_runs import ToolRunner

logger = logging.getLogger(__name__)


class LlmWorker:
    """The LLM worker: the shared `Worker` around the chat service, its providers, routing
    and health monitor.

    Args:
        settings: the worker's settings.
        providers: the worker's client per provider.
        registry: where metrics go.
        make_client: builds a dedicated client for a deployment with its own endpoint or
            credentials (None: the worker's client of its provider).

    Raises:
        ValueError: the routing file or the price table is invalid (the worker refuses to
            start).
    """

    def __init__(
        self,
        settings: LlmWorkerSettings,
        *,
        providers: Mapping[str, ChatModel],
        registry: CollectorRegistry,
        make_client: Callable[[Deployment], ChatModel | None] | None = None,
    ) -> None:
        self._settings = settings
        self.resolver = ModelResolver(providers, settings.model_aliases)
        self._make_client = make_client or (lambda d: dedicated_client(settings, d))
        self.breakers = Breakers(
            registry,
            fail_max=settings.breaker_fail_max,
            reset_timeout=settings.breaker_reset_timeout,
            max_ad_hoc=settings.max_direct_models,
        )
        self.resilience = Resilience(
            breakers=self.breakers,
            retry=RetryPolicy(
                max_attempts=settings.retry_max_attempts,
                base_delay=settings.retry_base_delay,
                max_delay=settings.retry_max_delay,
            ),
            attempt_budget=settings.attempt_budget,
            restart_streams=settings.restart_streams,
            share=lambda: self.worker.share(),
            cooldowns=Cooldowns(max_ad_hoc=settings.max_direct_models),
        )
        registry.register(UpstreamStatsCollector(self.resilience.stats))
        connection = settings.kafka_connection()
        client_id = f"ferryman-llm-worker-{settings.instance_id}"
        self.cancels = CancelBoard(settings.cancel_window)
        self.control = ControlReader(
            connection,
            settings.control_topic,
            window=settings.cancel_window,
            handlers={
                MCP_CANCEL_REQUESTED: self._on_cancel,
                LLM_CACHE_INVALIDATE_REQUESTED: self._on_cache_invalidation,
            },
            client_id=f"{client_id}-control",
        )
        self.catalog = CatalogView(
            connection, settings.catalog_topic, client_id=f"{client_id}-catalog"
        )
        self.journal = LoopJournal(
            connection,
            settings.tool_loop_topic,
            lambda: self.worker.publisher,
            source=f"/ferryman/llm-worker/{settings.instance_id}",
            window=settings.tool_loop_window,
            memory=settings.tool_loop_memory,
            client_id=f"{client_id}-tool-loop",
        )
        dispatcher = ToolDispatcher(
            lambda: self.worker.publisher,
            request_topic=settings.mcp_request_topic,
            reply_topic=settings.tool_loop_topic,
            control_topic=settings.control_topic,
        )
        tenants = LabelBudget(self._configured_tenants, max_dynamic=settings.metrics_max_tenants)
        metrics = LlmMetrics(registry, configured_models=self._configured_models, tenants=tenants)
        watch_gemini_caches(registry, providers, self._routing_clients)
        self.response_cache = build_response_cache(settings, metrics)
        self.usage = UsageRecorder(
            lambda: self.worker.publisher,
            topic=settings.usage_topic,
            source=f"/ferryman/llm-worker/{settings.instance_id}",
            service="llm_worker",
            registry=registry,
            prices=PriceTable.load(settings.price_table),
            tenants=tenants,
            models=UsageModels(self._configured_targets, max_dynamic=MAX_MODELS),
        )
        self.datarefs = storage_resolver(settings)
        runner = ToolRunner(
            dispatcher,
            self.journal,
            result_max_chars=settings.tool_result_max_chars,
            metrics=metrics,
        )
        self.service = ChatService(
            self.resolver,
            metrics,
            CapabilityTable(settings.capabilities),
            StreamTimeouts(
                first_token=settings.first_token_timeout,
                idle=settings.stream_idle_timeout,
                total=settings.request_timeout,
            ),
            self.resilience,
            tool_loop=ToolLoop(
                self.catalog,
                self.journal,
                runner,
                metrics,
                timeout=settings.tool_loop_timeout,
                cancels=self.cancels,
            ),
            cancels=self.cancels,
            cancels_ready=self.control.ready,
            datarefs=self.datarefs.resolver if self.datarefs else None,
            usage=self.usage,
            response_cache=self.response_cache,
            prompt_cache_auto=settings.prompt_cache_auto,
        )
        self._owned_clients: list[ChatModel] = []
        self.watcher: ConfigWatcher[RoutingTable] | None = None
        if settings.routing_file is not None:
            self.watcher = ConfigWatcher(
                settings.routing_file,
                self._load_routing,
                self._apply_routing,
                registry=registry,
                name="routing",
                interval=settings.routing_poll_interval,
            )
            self.watcher.load_initial()
        self.monitor = HealthMonitor(
            upstreams=self._deployment_refs,
            stats=self.resilience.stats,
            circuits=self.breakers.state_of,
            publish=lambda report: publish_health(
                self.worker.publisher, settings.health_topic, report, source=self.worker.source
            ),
            service="llm_worker",
            instance=settings.instance_id,
            config_version=lambda: self.watcher.version if self.watcher else None,
            probe_interval=settings.health_probe_interval,
            probe_timeout=settings.health_probe_timeout,
            report_interval=settings.health_report_interval,
            registry=registry,
        )
        background = [
            self.monitor.run, self.control.run, self.catalog.run, self.journal.run, self.usage.start
        ]  # fmt: skip
        if self.watcher is not None:
            background.append(self.watcher.run)
        self.worker = Worker(
            settings,
            name="llm_worker",
            spec=CHAT_REQUESTS,
            service=ChatRequests(self.service),
            registry=registry,
            background=background,
            on_stop=[
                self._close_clients,
                *([self.datarefs.aclose] if self.datarefs else []),
                *([self.response_cache.aclose] if self.response_cache else []),
            ],
            # Answers being stored are awaited before the publisher (and usage events) stop.
            on_drained=[
                *([self.response_cache.drain] if self.response_cache else []),
                self.usage.stop,
            ],
            details=self._details,
            # Kept long enough for any rerun to find its steps (the window), and a day at least.
            extra_topics={
                settings.tool_loop_topic: {
                    "retention.ms": str(int(max(settings.tool_loop_window * 2, 86_400) * 1000))
                },
                settings.usage_topic: {},
                # Cancels and cache invalidations: the first request waits for this reader to
                # catch up, which it cannot do on a topic that does not exist yet.
                settings.control_topic: {},
                **({settings.storage.reply_topic: {}} if self.datarefs else {}),
            },
        )

    def _on_cancel(self, event: IncomingEvent) -> None:
        cancel = CancelRequest.model_validate(event.data)
        if cancel.source == TOOL_LOOP_SOURCE:
            return  # a tool loop cancelling its tool calls: for the mcp_worker
        if self.cancels.cancel((cancel.source, cancel.request_id), cancel.reason):
            logger.info("chat request %s cancelled", cancel.request_id[:200])

    def _on_cache_invalidation(self, event: IncomingEvent) -> None:
        invalidation = CacheInvalidation.model_validate(event.data)
        if self.response_cache is not None:
            self.response_cache.invalidate_soon(invalidation, event_time(event), event.id)

    def _load_routing(self, data: bytes) -> RoutingTable:
        config = RoutingConfig.parse(data, f"routing file {self._settings.routing_file}")
        return build_table(config, self.resolver, self._make_client, content_version(data))

    def _apply_routing(self, table: RoutingTable, version: str) -> None:
        self._owned_clients.extend(table.owned_clients)
        self.service.apply_routing(table)
        logger.info(
            "routing version %s active: %d deployments, %d routes",
            version,
            len(table.config.deployments),
            len(table.config.routes),
        )

    def _routing_clients(self) -> Mapping[str, ChatModel] | None:
        """The routing table's clients by deployment name (None: no table)."""
        table = self.service.routing
        return None if table is None else table.clients

    def _configured_tenants(self) -> set[str]:
        """Tenants named in the routing file's quotas (labelled by name in metrics)."""
        table = self.service.routing
        return set() if table is None else set(table.config.tenants) - {"*"}

    def _configured_models(self) -> set[str]:
        """Models of the routing file's deployments and of the model aliases."""
        models = {target.partition("/")[2] for target in self._settings.model_aliases.values()}
        table = self.service.routing
        if table is not None:
            models.update(d.model for d in table.config.deployments.values())
        return models

    def _configured_targets(self) -> set[str]:
        """`provider/model` of the routing file's deployments and of the model aliases."""
        targets = set(self._settings.model_aliases.values())
        table = self.service.routing
        if table is not None:
            targets.update(f"{d.provider}/{d.model}" for d in table.config.deployments.values())
        return targets

    def _deployment_refs(self) -> list[UpstreamRef]:
        table = self.service.routing
        if table is None:  # no routing file: one entry per provider
            return [
                _deployment_ref(f"{name}/*", name, "*", client)
                for name, client in sorted(self.resolver.providers.items())
            ]
        return [
            _deployment_ref(name, d.provider, d.model, table.clients[name])
            for name, d in sorted(table.config.deployments.items())
        ]

    async def _close_clients(self) -> None:
        for client in self._owned_clients:
            await client.aclose()
        await self.resolver.aclose()

    async def models(self) -> tuple[int, dict[str, Any]]:
        """`/models`: each provider's models from its (unbilled) listing API, or its error."""
        listing: dict[str, Any] = {}
        for name, provider in sorted(self.resolver.providers.items()):
            try:
                listing[name] = {"models": await provider.list_models()}
            except FerrymanError as exc:
                listing[name] = {"error": exc.to_info().model_dump(exclude_none=True)}
        return 200, {"providers": listing}

    def _details(self) -> dict[str, Any]:
        """The LLM worker's part of `/health`."""
        return {
            "providers": sorted(self.resolver.providers),
            "routing": self.watcher.status() if self.watcher else None,
            "circuits": self.breakers.states(),
            "tool_loop": {
                "catalog_servers": self.catalog.servers(),
                "journal_bytes": self.journal.held_bytes(),
                "running": self.cancels.running(),
            },
            "deployments": self.monitor.snapshot(),
            "response_cache": (
                self.response_cache.status() if self.response_cache else {"backend": "off"}
            ),
            "quotas": {
                "share": round(self.worker.share(), 4),
                "deployments": self.resilience.deployment_quotas.snapshot(),
                "tenants": self.resilience.tenant_quotas.snapshot(),
            },
        }


def _deployment_ref(name: str, provider: str, model: str, client: ChatModel) -> UpstreamRef:
    """A deployment as the health monitor sees it: probed by an unbilled model listing, once
    per client however many deployments it serves."""
    return UpstreamRef(
        name=name,
        kind="llm",
        labels={"provider": provider, "model": model},
        probe=client.list_models,
        probe_group=client.provider,
        group_key=id(client),
    )


def create_app(
    settings: LlmWorkerSettings,
    *,
    providers: Mapping[str, ChatModel] | None = None,
    registry: CollectorRegistry | None = None,
    make_client: Callable[[Deployment], ChatModel | None] | None = None,
) -> AsgiFastStream:
    """Build the LLM worker's FastStream app (only the routing file is read before start).

    Raises:
        ValueError: the routing file is invalid.
    """
    registry = registry or CollectorRegistry()
    worker = LlmWorker(
        settings,
        providers=providers if providers is not None else build_providers(settings),
        registry=registry,
        make_client=make_client,
    )
    return worker.worker.app({"/models": worker.models})
