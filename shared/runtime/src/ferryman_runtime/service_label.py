"""The `service` label on every sample a worker serves at `/metrics`.

It is added once, at scrape time, around the worker's registry, so no metric declares
it and in-process readers of the registry (tests) see the families without it.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

SERVICE = "service"
"""The label naming the worker (`llm_worker`, `mcp_worker`, `storage_worker`)."""


class ServiceLabelled(Collector):
    """Yields `registry`'s families with `service=<service>` on every sample (a sample
    already carrying a `service` label keeps its own).

    Args:
        registry: the worker's registry.
        service: the worker's name.

    Raises:
        ValueError: `service` is empty.
    """

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        if not service:
            raise ValueError("service must not be empty")
        self._registry = registry
        self._service = service

    def collect(self) -> Iterable[Metric]:
        for family in self._registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [
                sample
                if SERVICE in sample.labels
                else sample._replace(labels={SERVICE: self._service, **sample.labels})
                for sample in family.samples
            ]
            yield labelled


def service_registry(registry: CollectorRegistry, service: str) -> CollectorRegistry:
    """A registry serving `registry`'s metrics with the `service` label added."""
    served = CollectorRegistry(auto_describe=False)
    served.register(ServiceLabelled(registry, service))
    return served
