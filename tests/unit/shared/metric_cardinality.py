"""Drives a whole worker (not started) with producer-chosen values and reads what its
`/metrics` would serve: shared by the per-worker cardinality tests (design §2.3).

A worker's Kafka client is replaced at the wire: its publisher's producer acknowledges
every record at once, and its admin client lists the topics the test says exist. Records
go straight into the worker's request pipeline, as its consumer would hand them over.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client import disable_created_metrics, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ferryman.codec import encode_binary
from ferryman_runtime.service_label import service_registry
from ferryman_runtime.worker import Worker

REQUESTS = 1000
"""Requests per cardinality test."""

CONFIGURED_OVERHEAD = 2
"""Label values a tenant budget adds besides the configured and dynamic ones: `other` and
`none`."""


def random_name(prefix: str, rng: random.Random, length: int = 12) -> str:
    """A fresh name no configuration holds (`prefix` + random letters and digits)."""
    return prefix + "".join(rng.choices(string.ascii_lowercase + string.digits, k=length))


def random_tenants(rng: random.Random, count: int = REQUESTS // 3) -> list[str]:
    """`count` fresh tenant names (each then sends about two requests)."""
    return [random_name("tenant-", rng) for _ in range(count)]


def pick_tenant(rng: random.Random, configured: Collection[str], pool: list[str]) -> str | None:
    """A tenant for one request: mostly one of the random `pool`, else a configured one or
    none."""
    pick = rng.random()
    if pick < 0.1:
        return None
    if pick < 0.3:
        return rng.choice(sorted(configured))
    return rng.choice(pool)


class _Sender:
    sender_task = None  # what KafkaPublisher checks to see whether its sender died


@dataclass
class Broker:
    """Stands in for Kafka under a worker: records what its producer sends (acknowledged
    at once) and answers its admin client's topic listing with `topics`."""

    topics: set[str] = field(default_factory=set[str])
    sent: list[tuple[str, bytes | None]] = field(default_factory=list[tuple[str, bytes | None]])
    _sender: _Sender = field(default_factory=_Sender)

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, **_: Any
    ) -> asyncio.Future[None]:
        """The producer's `send`: the returned future is the broker's acknowledgement."""
        self.sent.append((topic, value))
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acked.set_result(None)
        return acked

    async def list_topics(self) -> list[str]:
        """The admin client's topic listing."""
        return sorted(self.topics)

    def partitions_for_topic(self, topic: str) -> set[int]:
        """The consumer's metadata: every topic has one partition."""
        return {0}

    def pause(self, *_: Any) -> None:
        """The consumer's `pause` (nothing is fetched here anyway)."""

    async def attach(self, worker: Worker[Any]) -> None:
        """Put this broker under `worker`'s publisher, admin client and consumer (it is not
        started, so none has a connection of its own), and assign it the request topic's
        one partition the way the group coordinator would (its quota share becomes 1)."""
        worker.publisher._producer_or_none = self  # pyright: ignore[reportPrivateUsage, reportAttributeAccessIssue]
        worker._admin = self  # pyright: ignore[reportPrivateUsage, reportAttributeAccessIssue]
        consumer = worker.consumer
        consumer._consumer_or_none = self  # pyright: ignore[reportPrivateUsage, reportAttributeAccessIssue]
        partition = TopicPartition(worker.settings.request_topic, 0)
        await consumer._group_assignment.on_partitions_assigned({partition})  # pyright: ignore[reportPrivateUsage]
        assert worker.share() == 1.0


def request_record(
    topic: str,
    offset: int,
    event_type: str,
    data: Any,
    *,
    request_id: str,
    tenant: str | None,
    reply_to: str | None,
) -> ConsumerRecord[bytes, bytes]:
    """A binary-mode CloudEvent request as the consumer hands it over (keyed by its tenant,
    so the replica owns the tenant's whole quota)."""
    attributes: dict[str, Any] = {
        "id": request_id,
        "type": event_type,
        "source": "/test/cardinality",
        "datacontenttype": "application/json",
    }
    if tenant is not None:
        attributes["tenant"] = tenant
    if reply_to is not None:
        attributes["replyto"] = reply_to
    headers, value = encode_binary(attributes, json.dumps(data).encode())
    key = (tenant or request_id).encode()
    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key),
        serialized_value_size=len(value),
        headers=tuple(headers),
    )


@dataclass(frozen=True)
class Scrape:
    """What `/metrics` serves: every sample's name and labels."""

    samples: list[tuple[str, dict[str, str]]]

    @property
    def series(self) -> int:
        """How many time series Prometheus would store."""
        return len(self.samples)

    def values(self, label: str) -> set[str]:
        """Every value of `label` across all samples."""
        return {labels[label] for _, labels in self.samples if label in labels}

    def label_values(self) -> dict[str, set[str]]:
        """Every label key with all its values."""
        found: dict[str, set[str]] = {}
        for _, labels in self.samples:
            for key, value in labels.items():
                found.setdefault(key, set()).add(value)
        return found

    def per_tenant(self) -> int:
        """The most `tenant` values any one series (all its other labels equal) has."""
        tenants: dict[tuple[str, frozenset[tuple[str, str]]], set[str]] = {}
        for name, labels in self.samples:
            if "tenant" in labels:
                rest = frozenset((k, v) for k, v in labels.items() if k != "tenant")
                tenants.setdefault((name, rest), set()).add(labels["tenant"])
        return max(map(len, tenants.values()), default=0)

    def leaked(self, chosen: Iterable[str]) -> set[str]:
        """The values of `chosen` that appear in some label value."""
        values = {value for _, labels in self.samples for value in labels.values()}
        return {value for value in chosen if any(value in v for v in values)}


def scrape(worker: Worker[Any]) -> Scrape:
    """The worker's registry as `/metrics` serves it (through the same `service` wrapper).

    Raises:
        AssertionError: a sample lacks the worker's `service` label.
    """
    disable_created_metrics()  # as the host app does
    text = generate_latest(service_registry(worker.registry, worker.name)).decode()
    samples = [
        (sample.name, dict(sample.labels))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]
    assert all(labels.get("service") == worker.name for _, labels in samples)
    return Scrape(samples)


def tenant_values(configured: Collection[str], max_dynamic: int) -> int:
    """How many `tenant` label values a tenant budget allows at most."""
    return len(configured) + max_dynamic + CONFIGURED_OVERHEAD
