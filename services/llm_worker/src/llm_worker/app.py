"""Composition root of the LLM worker: `create_app(settings)` wires everything, with no I/O."""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping
from typing import Any

from faststream.asgi import AsgiFastStream
from prometheus_client import CollectorRegistry

from llm_worker.capabilities import CapabilityTable
from llm_worker.handler import ChatRequestHandler
from llm_worker.ports import ChatModel
from llm_worker.providers import ModelRouter
from llm_worker.providers.mock import MockChatModel
from llm_worker.providers.openai import OpenAIChatModel, create_client
from llm_worker.routing import RoutingConfig
from llm_worker.service import ChatService, LlmMetrics
from llm_worker.settings import LlmWorkerSettings
from llm_worker.stream_guard import StreamTimeouts
from shared.contracts import FerrymanError
from shared.runtime.dedupe import RecentRequests
from shared.runtime.hosting import create_host_app
from shared.runtime.metrics import ConsumerMetrics
from shared.runtime.parallel_consumer import ParallelConsumer
from shared.runtime.producer import KafkaPublisher
from shared.runtime.resilience import Breakers, RetryPolicy
from shared.runtime.topics import ensure_topics

logger = logging.getLogger(__name__)


def build_providers(settings: LlmWorkerSettings) -> dict[str, ChatModel]:
    """Create the providers the settings enable (`mock` always).

    Raises:
        RuntimeError: a provider's configuration cannot be used (e.g. Entra ID without
            azure-identity).
    """
    providers: dict[str, ChatModel] = {
        "mock": MockChatModel(token_delay=settings.mock_token_delay_ms / 1000.0)
    }
    openai_config = settings.openai
    if openai_config.enabled:
        key = openai_config.api_key
        client = create_client(
            api_key=key.get_secret_value() if key else None,
            base_url=openai_config.base_url,
            timeout=openai_config.timeout,
            connect_timeout=openai_config.connect_timeout,
        )
        providers["openai"] = OpenAIChatModel(client)
    # Provider SDKs are imported only when enabled: each costs tens of MB of memory.
    if settings.azure.enabled:
        from llm_worker.providers.azure import AzureChatModel

        providers["azure"] = AzureChatModel(settings.azure)
    anthropic_config = settings.anthropic
    if anthropic_config.enabled:
        from llm_worker.providers.anthropic import AnthropicChatModel
        from llm_worker.providers.anthropic import create_client as create_anthropic_client

        key = anthropic_config.api_key
        anthropic_client = create_anthropic_client(
            api_key=key.get_secret_value() if key else None,
            base_url=anthropic_config.base_url,
            timeout=anthropic_config.timeout,
            connect_timeout=anthropic_config.connect_timeout,
        )
        providers["anthropic"] = AnthropicChatModel(
            anthropic_client,
            default_max_tokens=anthropic_config.default_max_tokens,
            max_tokens_by_model=anthropic_config.max_tokens_by_model,
            sampling=anthropic_config.sampling,
            thinking_budget=anthropic_config.thinking_budget_tokens,
        )
    gemini_config = settings.gemini
    if gemini_config.api_key is not None:
        from llm_worker.providers.gemini import GeminiChatModel
        from llm_worker.providers.gemini import create_client as create_gemini_client

        gemini_client = create_gemini_client(
            api_key=gemini_config.api_key.get_secret_value(),
            base_url=gemini_config.base_url,
            api_version=gemini_config.api_version or "v1",
            timeout=gemini_config.timeout,
        )
        providers["gemini"] = GeminiChatModel(
            gemini_client, safety_settings=gemini_config.safety_settings
        )
    return providers


class LlmWorker:
    """The running worker: consumer, producer, handler and providers."""

    def __init__(
        self,
        settings: LlmWorkerSettings,
        *,
        providers: Mapping[str, ChatModel],
        registry: CollectorRegistry,
    ) -> None:
        self._settings = settings
        self.router = ModelRouter(providers, settings.model_aliases)
        routing = RoutingConfig.load(settings.routing_file) if settings.routing_file else None
        self.consumer_metrics = ConsumerMetrics(registry, "llm_worker")
        self.breakers = Breakers(
            registry,
            "llm_worker",
            fail_max=settings.breaker_fail_max,
            reset_timeout=settings.breaker_reset_timeout,
        )
        client_id = f"ferryman-llm-worker-{settings.instance_id}"
        self.publisher = KafkaPublisher(settings.kafka_bootstrap_servers, client_id=client_id)
        handler = ChatRequestHandler(
            service=ChatService(
                self.router,
                LlmMetrics(registry),
                CapabilityTable(settings.capabilities),
                StreamTimeouts(
                    first_token=settings.first_token_timeout,
                    idle=settings.stream_idle_timeout,
                    total=settings.request_timeout,
                ),
                self.breakers,
                RetryPolicy(
                    max_attempts=settings.retry_max_attempts,
                    base_delay=settings.retry_base_delay,
                    max_delay=settings.retry_max_delay,
                ),
                routing,
            ),
            publisher=self.publisher,
            recent=RecentRequests(
                window=settings.dedupe_window, max_entries=settings.dedupe_max_entries
            ),
            metrics=self.consumer_metrics,
            source=f"/ferryman/llm-worker/{settings.instance_id}",
            default_reply_topic=settings.default_reply_topic,
            dlq_topic=settings.dlq_topic,
        )
        self.consumer = ParallelConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            topics=[settings.request_topic],
            group_id=settings.group_id,
            handler=handler,
            max_in_flight=settings.max_in_flight,
            metrics=self.consumer_metrics,
            client_id=client_id,
        )
        self._started = False

    async def start(self) -> None:
        """Create missing topics, connect the producer and join the consumer group.

        Raises:
            aiokafka.errors.KafkaError: Kafka could not be reached.
        """
        s = self._settings
        if s.create_topics:
            await ensure_topics(
                s.kafka_bootstrap_servers,
                [s.request_topic, s.dlq_topic, s.default_reply_topic],
                partitions=s.topic_partitions,
                replication_factor=s.topic_replication_factor,
            )
        await self.publisher.start()
        await self.consumer.start()
        # Long-lived startup objects need not be scanned by every collection (shorter pauses).
        gc.freeze()
        self._started = True
        logger.info(
            "llm worker consuming %s as group %s (max in flight %d, providers: %s)",
            s.request_topic,
            s.group_id,
            s.max_in_flight,
            ", ".join(sorted(self.router.providers)),
        )

    async def stop(self) -> None:
        """Drain within the grace period, commit, and disconnect."""
        if self._started:
            await self.consumer.stop(self._settings.grace_period)
            await self.publisher.stop()
        await self.router.aclose()
        logger.info("llm worker stopped")

    async def models(self) -> tuple[int, dict[str, Any]]:
        """`/models`: each provider's models from its (unbilled) listing API, or its error."""
        listing: dict[str, Any] = {}
        for name, provider in sorted(self.router.providers.items()):
            try:
                listing[name] = {"models": await provider.list_models()}
            except FerrymanError as exc:
                listing[name] = {"error": exc.to_info().model_dump(exclude_none=True)}
        return 200, {"providers": listing}

    def health(self) -> dict[str, Any]:
        """Readiness (partitions assigned) and consumer status."""
        status = self.consumer.status()
        return {
            "service": "llm_worker",
            "ready": self._started and bool(status["assigned"]),
            "consumer": status,
            "providers": sorted(self.router.providers),
            "circuits": self.breakers.states(),
        }


def create_app(
    settings: LlmWorkerSettings,
    *,
    providers: Mapping[str, ChatModel] | None = None,
    registry: CollectorRegistry | None = None,
) -> AsgiFastStream:
    """Build the LLM worker's FastStream app (no I/O happens until it starts)."""
    registry = registry or CollectorRegistry()
    worker = LlmWorker(
        settings,
        providers=providers if providers is not None else build_providers(settings),
        registry=registry,
    )
    return create_host_app(
        worker,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        registry=registry,
        extra_routes={"/models": worker.models},
    )
