"""Composition root of the storage_worker: `create_app(settings)` wires everything, with no
I/O beyond reading the policy file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from faststream.asgi import AsgiFastStream
from prometheus_client import CollectorRegistry

from ferryman_runtime.config_watch import ConfigWatcher
from ferryman_runtime.metric_labels import LabelBudget
from ferryman_runtime.resilience import Breakers, RetryPolicy
from ferryman_runtime.upstreams.stats import StatsBoard, UpstreamStatsCollector
from ferryman_runtime.usage import UsageRecorder
from ferryman_runtime.worker import Worker
from storage_worker.contract import STORAGE_REQUESTS, StorageRequests
from storage_worker.events import ObjectEvents
from storage_worker.local_urls import LocalObjectUrls
from storage_worker.metrics import EventsCollector, StorageMetrics
from storage_worker.pipelines.triggers import UploadTriggers
from storage_worker.policy import Policy, default_policy, parse_policy
from storage_worker.quotas import TenantQuotas
from storage_worker.service import StorageService
from storage_worker.settings import StorageWorkerSettings
from storage_worker.signed_urls import OBJECTS_PATH, UrlSigner, default_base_url, signing_key
from storage_worker.stores import Stores

_NAME = "storage_worker"


class StorageWorker:
    """The storage_worker: the shared `Worker` around the storage service, its backends,
    its policy (hot reloaded) and its object events.

    Args:
        settings: the worker's settings.
        registry: where metrics go.
        environ: where credential references resolve (default: the process environment).

    Raises:
        PolicyError: the policy file is invalid (the worker refuses to start).
        ValueError: the URL signing key's reference cannot be resolved, or the key is short.
    """

    def __init__(
        self,
        settings: StorageWorkerSettings,
        *,
        registry: CollectorRegistry,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._settings = settings
        self.metrics = StorageMetrics(
            registry,
            LabelBudget(self._configured_tenants, max_dynamic=settings.metrics_max_tenants),
        )
        self.upstreams = StatsBoard()
        registry.register(UpstreamStatsCollector(self.upstreams))
        reference = settings.url_signing_key
        self.signer = UrlSigner(
            signing_key(
                reference.get_secret_value() if reference else None,
                os.environ if environ is None else environ,
            ),
            settings.public_url or default_base_url(settings.http_host, settings.http_port),
        )
        self.breakers = Breakers(
            registry,
            fail_max=settings.breaker_fail_max,
            reset_timeout=settings.breaker_reset_timeout,
        )
        self.stores = Stores(
            environ,
            breakers=self.breakers,
            retry=RetryPolicy(
                max_attempts=settings.retry_max_attempts,
                base_delay=settings.retry_base_delay,
                max_delay=settings.retry_max_delay,
            ),
            signer=self.signer,
            stats=self.upstreams,
            metrics=self.metrics,
        )
        self.quotas = TenantQuotas(
            lambda: self.worker.share(), on_refused=self.metrics.quota_refused
        )
        self.policy: Policy = default_policy(settings.local_root)
        self.stores.configure(self.policy)
        self.quotas.configure(self.policy)
        self.watcher: ConfigWatcher[Policy] | None = None
        if settings.policy_file is not None:
            self.watcher = ConfigWatcher(
                settings.policy_file,
                lambda data: parse_policy(data, f"policy file {settings.policy_file}"),
                self._apply_policy,
                registry=registry,
                name="policy",
                interval=settings.policy_poll_interval,
            )
            self.watcher.load_initial()
        self.events = ObjectEvents(
            lambda: self.worker.publisher,
            settings.events_topic,
            source=f"/ferryman/storage-worker/{settings.instance_id}",
        )
        registry.register(EventsCollector(self.events))
        self.usage = UsageRecorder(
            lambda: self.worker.publisher,
            topic=settings.usage_topic,
            source=f"/ferryman/storage-worker/{settings.instance_id}",
            service=_NAME,
            registry=registry,
            tenants=self.metrics.tenants,
        )
        uploads = UploadTriggers(
            lambda: self.worker.publisher,
            request_topic=settings.request_topic,
            reply_topic=settings.pipeline_reply_topic or settings.default_reply_topic,
        )
        self.service = StorageService(
            stores=self.stores,
            policy=lambda: self.policy,
            events=self.events,
            inline_limit=settings.inline_limit,
            quotas=self.quotas,
            uploads=uploads,
            metrics=self.metrics,
            record_usage=self.usage.record,
        )
        self.object_urls = LocalObjectUrls(
            self.signer,
            self.stores.get,
            policy=lambda: self.policy,
            events=self.events,
            triggers=uploads,
        )
        """The `/objects` route serving the local backends' signed URLs."""
        self.worker = Worker(
            settings,
            name=_NAME,
            spec=STORAGE_REQUESTS,
            service=StorageRequests(self.service),
            registry=registry,
            background=[self.usage.start]
            + ([self.watcher.run] if self.watcher is not None else []),
            on_stop=[self.stores.close],
            on_drained=[self.usage.stop],
            details=self._details,
            extra_topics={settings.events_topic: {}, settings.usage_topic: {}},
        )

    def app(self) -> AsgiFastStream:
        """The FastStream app that runs the worker and serves `/health`, `/metrics` and, on
        the same HTTP server, the local backends' signed URLs (`/objects`)."""
        app = self.worker.app()
        app.mount(OBJECTS_PATH, self.object_urls)
        return app

    def _configured_tenants(self) -> set[str]:
        """Tenants the policy names (not patterns): their metric labels always pass."""
        return {t for t in self.policy.tenants if not any(c in t for c in "*?[")}

    def _apply_policy(self, policy: Policy, version: str) -> None:
        self.policy = policy
        self.stores.configure(policy)
        self.quotas.configure(policy)

    def _details(self) -> dict[str, Any]:
        return {
            "policy": self.watcher.status() if self.watcher else "default (local backend)",
            "backends": sorted(self.policy.backends),
            "events": {"published": self.events.published, "failed": self.events.failed},
            "quota_refusals": self.quotas.refused,
            "circuits": self.breakers.states(),
        }


def create_app(
    settings: StorageWorkerSettings,
    *,
    registry: CollectorRegistry | None = None,
    environ: Mapping[str, str] | None = None,
) -> AsgiFastStream:
    """Build the storage_worker's FastStream app (only the policy file is read before start).

    Raises:
        PolicyError: the policy file is invalid.
        ValueError: the URL signing key's reference cannot be resolved, or the key is short.
    """
    worker = StorageWorker(settings, registry=registry or CollectorRegistry(), environ=environ)
    return worker.app()
