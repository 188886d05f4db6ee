"""The open backends of the active policy: each opened on first use, reopened when its
configuration changes (the old one closed once its in-flight work had time to end)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping

from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman_runtime.resilience import Breakers, RetryPolicy
from ferryman_runtime.upstreams.stats import StatsBoard
from storage_worker.backends.port import ObjectStore, StoredObject
from storage_worker.metrics import StorageMetrics
from storage_worker.policy import AzureBackend, Backend, GcsBackend, LocalBackend, Policy
from storage_worker.resilient_store import ResilientStore
from storage_worker.signed_urls import UrlSigner

logger = logging.getLogger(__name__)

RETIRE_AFTER = 300.0
"""Seconds a replaced backend stays open for the requests still using it."""


class Stores:
    """Backends by name, each behind its breaker and with retries (`ResilientStore`).

    Args:
        environ: where credential references resolve.
        breakers: one circuit per backend name (default: no metrics, 5 failures, 30 s).
        retry: attempts of the calls a backend may see twice.
        signer: signs the local backends' URLs (None: they sign none).
        stats: every backend call's outcome, by backend name (`ferryman_upstream_*`).
        metrics: where bytes moved and object sizes go (None: nowhere).
        tracer: where the backend operations' spans go (default: the global provider's).
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        breakers: Breakers | None = None,
        retry: RetryPolicy | None = None,
        signer: UrlSigner | None = None,
        stats: StatsBoard | None = None,
        metrics: StorageMetrics | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._environ = os.environ if environ is None else environ
        self._signer = signer
        self.stats = stats or StatsBoard()
        self._metrics = metrics
        self._tracer = tracer
        self._breakers = breakers or Breakers(CollectorRegistry(), fail_max=5, reset_timeout=30.0)
        self._retry = retry or RetryPolicy()
        self._configs: dict[str, Backend] = {}
        self._open: dict[str, tuple[Backend, ObjectStore]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    def configure(self, policy: Policy) -> None:
        """Take the policy's backends (a changed or removed one is closed later)."""
        self._configs = dict(policy.backends)
        for name, (config, store) in list(self._open.items()):
            if self._configs.get(name) != config:
                del self._open[name]
                self._retire(store)

    async def get(self, name: str) -> ObjectStore:
        """The open backend `name`.

        Raises:
            FerrymanError: `unavailable` when it is not configured or cannot be opened.
        """
        current = self._open.get(name)
        if current is not None:
            return current[1]
        async with self._locks.setdefault(name, asyncio.Lock()):
            current = self._open.get(name)
            if current is not None:
                return current[1]
            config = self._configs.get(name)
            if config is None:
                raise FerrymanError(
                    ErrorCode.UNAVAILABLE, f"backend {name!r} is not configured", retryable=False
                )
            store = ResilientStore(
                await self._open_store(name, config),
                breaker=self._breakers.get(name),
                retry=self._retry,
                stats=self.stats.get(name),
                metrics=self._metrics,
                remote=not isinstance(config, LocalBackend),
                tracer=self._tracer,
            )
            self._open[name] = (config, store)
            return store

    async def _open_store(self, name: str, config: Backend) -> ObjectStore:
        if isinstance(config, LocalBackend):
            from storage_worker.backends.local import LocalStore

            return LocalStore(name, config.root, signer=self._signer)
        if isinstance(config, GcsBackend):
            from storage_worker.backends.gcs_open import open_gcs

            return await open_gcs(name, config, self._environ)
        if isinstance(config, AzureBackend):
            from storage_worker.backends.azure_open import open_azure

            return await open_azure(name, config, self._environ)
        from storage_worker.backends.s3_open import open_s3

        return await open_s3(name, config, self._environ)

    def _retire(self, store: ObjectStore) -> None:
        async def later() -> None:
            try:
                await asyncio.sleep(RETIRE_AFTER)  # a grace period, not synchronization
            finally:
                await store.close()

        task = asyncio.get_running_loop().create_task(later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        """Close every backend."""
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        stores = [store for _, store in self._open.values()]
        self._open.clear()
        await asyncio.gather(*(s.close() for s in stores), return_exceptions=True)


async def head_or_none(store: ObjectStore, key: str) -> StoredObject | None:
    """The object's description, or None when there is none.

    Raises:
        FerrymanError: the backend failed otherwise.
    """
    try:
        return await store.head(key)
    except FerrymanError as exc:
        if exc.code == ErrorCode.NOT_FOUND:
            return None
        raise
