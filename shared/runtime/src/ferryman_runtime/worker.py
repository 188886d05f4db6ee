"""The Kafka side every worker shares: producer, consumer, request pipeline, dedupe, topics;
start, drain and stop; `/health` and `/metrics`.

A worker is then its settings, its contract (`RequestSpec`), its service and its adapters:

```python
def create_app(settings: EchoSettings) -> AsgiFastStream:
    registry = CollectorRegistry()
    worker = Worker(
        settings, name="echo_worker", spec=ECHO, service=EchoService(), registry=registry
    )
    return worker.app()
```
"""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Generic

from aiokafka.admin import AIOKafkaAdminClient  # pyright: ignore[reportMissingTypeStubs]
from faststream.asgi import AsgiFastStream
from prometheus_client import CollectorRegistry

from ferryman.publisher import KafkaPublisher
from ferryman.topics import ensure_topics
from ferryman_runtime.consumer_lag import ConsumerLagCollector
from ferryman_runtime.dedupe import RecentRequests
from ferryman_runtime.hosting import JsonEndpoint, create_host_app
from ferryman_runtime.job import RequestService, RequestSpec, RequestT
from ferryman_runtime.metrics import ConsumerMetrics, WorkerStatusMetrics
from ferryman_runtime.parallel_consumer import ParallelConsumer
from ferryman_runtime.pipeline import RequestPipeline
from ferryman_runtime.reply_topics import ReplyTopicPolicy, TopicDirectory
from ferryman_runtime.sent_messages import CountingPublisher, SentMessages, configured_topics
from ferryman_runtime.settings import WorkerSettings

logger = logging.getLogger(__name__)

BackgroundTask = Callable[[], Coroutine[Any, Any, None]]
"""Started with the worker, cancelled when it stops (health monitors, config watchers)."""


def _build_version() -> str:
    try:
        return importlib.metadata.version("ferryman-runtime")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Worker(Generic[RequestT]):
    """One worker process's Kafka plumbing around a service.

    Args:
        settings: the shared settings (topics, delivery, concurrency).
        name: the service name (`llm_worker`): the `service` label of `/metrics`,
            `ce_source`, client ids.
        spec: the requests the worker accepts and its `failed` reply.
        service: executes valid requests.
        registry: where metrics go.
        background: coroutines run while the worker runs.
        on_stop: awaited after draining (close upstream clients).
        on_drained: awaited after draining, before the publisher stops (flush side events,
            such as usage records, that the drained requests queued).
        details: extra fields of the `/health` document.
        extra_topics: more topics to create at start (name → topic configs), e.g. a
            compacted catalog topic.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        name: str,
        spec: RequestSpec[RequestT],
        service: RequestService[RequestT],
        registry: CollectorRegistry,
        background: Sequence[BackgroundTask] = (),
        on_stop: Sequence[Callable[[], Awaitable[None]]] = (),
        on_drained: Sequence[Callable[[], Awaitable[None]]] = (),
        details: Callable[[], Mapping[str, Any]] | None = None,
        extra_topics: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.registry = registry
        self.source = f"/ferryman/{name.replace('_', '-')}/{settings.instance_id}"
        client_id = f"ferryman-{name.replace('_', '-')}-{settings.instance_id}"
        self.metrics = ConsumerMetrics(registry)
        self.connection = settings.kafka_connection()
        self.publisher: KafkaPublisher = CountingPublisher(
            settings.kafka_bootstrap_servers,
            sent=SentMessages(registry, configured_topics(settings, extra_topics or {})),
            client_id=client_id,
            linger_ms=settings.producer_linger_ms,
            connection=self.connection.security_options(),
        )
        self._admin: AIOKafkaAdminClient | None = None
        self.directory = TopicDirectory(self._list_topics)
        self.pipeline = RequestPipeline(
            spec=spec,
            service=service,
            publisher=self.publisher,
            recent=RecentRequests(
                window=settings.dedupe_window, max_entries=settings.dedupe_max_entries
            ),
            metrics=self.metrics,
            source=self.source,
            reply_topics=ReplyTopicPolicy(
                default=settings.default_reply_topic,
                patterns=settings.reply_topics,
                by_tenant=settings.reply_topics_by_tenant,
                own_topics=[settings.request_topic, settings.dlq_topic, settings.health_topic],
            ),
            directory=self.directory,
            default_reply_topic=settings.default_reply_topic,
            dlq_topic=settings.dlq_topic,
            share=self.share,
            generation=lambda: self.consumer.generation,
            group_id=settings.group_id,
        )
        self.consumer = ParallelConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            topics=[settings.request_topic],
            group_id=settings.group_id,
            handler=self.pipeline,
            max_in_flight=settings.max_in_flight,
            metrics=self.metrics,
            client_id=client_id,
            max_attempts=settings.handler_max_attempts,
            retry_backoff=(settings.handler_retry_base_delay, settings.handler_retry_max_delay),
            on_exhausted=self.pipeline.dead_letter_exhausted,
            on_undecodable=self.pipeline.dead_letter_undecodable,
            client_options=self.connection.security_options(),
            key_ordered=settings.key_ordered,
            lag_interval=settings.lag_interval,
        )
        registry.register(ConsumerLagCollector(self.consumer.lag, settings.group_id))
        WorkerStatusMetrics(registry, ready=self.ready, version=_build_version())
        self._background = list(background)
        self._on_stop = list(on_stop)
        self._on_drained = list(on_drained)
        self._details = details
        self._extra_topics = dict(extra_topics or {})
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    def share(self) -> float:
        """This replica's assigned partitions ÷ all partitions of the request topic."""
        return self.consumer.share()

    def topics(self) -> list[str]:
        """The topics this worker creates at startup (when `create_topics` is set)."""
        s = self.settings
        own = [s.request_topic, s.dlq_topic, s.default_reply_topic, s.health_topic]
        return own + [name for name in self._extra_topics if name not in own]

    async def _list_topics(self) -> Iterable[str]:
        if self._admin is None:
            raise RuntimeError("Worker.start() was not called")
        topics: Iterable[str] = await self._admin.list_topics()
        return topics

    async def start(self) -> None:
        """Create missing topics, connect and join the consumer group.

        Raises:
            aiokafka.errors.KafkaError: Kafka could not be reached.
        """
        s = self.settings
        if s.create_topics:
            await ensure_topics(
                self.connection,
                self.topics(),
                partitions=s.topic_partitions,
                replication_factor=s.topic_replication_factor,
                configs=self._extra_topics,
            )
        self._admin = AIOKafkaAdminClient(
            **self.connection.aiokafka_options(default_client_id=f"{self.source}-admin")
        )
        await self._admin.start()
        await self.publisher.start()
        await self.consumer.start()
        self._tasks = [
            asyncio.create_task(make(), name=f"{self.name}-background") for make in self._background
        ]
        # Long-lived startup objects need not be scanned by every collection (shorter pauses).
        gc.freeze()
        self._started = True
        logger.info(
            "%s consuming %s as group %s (max in flight %d)",
            self.name,
            s.request_topic,
            s.group_id,
            s.max_in_flight,
        )

    async def stop(self) -> None:
        """Drain within the grace period, commit, and disconnect."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._started:
            await self.consumer.stop(self.settings.grace_period)
            for hook in self._on_drained:
                await hook()
            await self.publisher.stop()
        if self._admin is not None:
            await self._admin.close()
        for hook in self._on_stop:
            await hook()
        logger.info("%s stopped", self.name)

    def ready(self) -> bool:
        """Running and in the consumer group (with or without partitions: replicas beyond
        the partition count are idle, not failing), the fetch loop alive, Kafka reachable."""
        return self._started and self.consumer.ready

    async def wait_failed(self) -> BaseException | None:
        """Wait until the consumer fails for good (its fetch or commit loop died); return
        why. The host then exits non-zero so an orchestrator restarts the process."""
        await self.consumer.failed.wait()
        return self.consumer.failure

    def health(self) -> dict[str, Any]:
        """The `/health` document: readiness, the consumer, and the service's details."""
        return {
            "service": self.name,
            "ready": self.ready(),
            "consumer": self.consumer.status(),
            **(self._details() if self._details is not None else {}),
        }

    def app(self, extra_routes: Mapping[str, JsonEndpoint] | None = None) -> AsgiFastStream:
        """The FastStream app that runs this worker and serves `/health`, `/metrics` and
        `extra_routes` (path → JSON endpoint)."""
        return create_host_app(
            self,
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            registry=self.registry,
            service_name=self.name,
            extra_routes=dict(extra_routes or {}),
        )
