"""Runs a storage_worker in the test process on the real Kafka, with unique topics, and
talks to it the way a producer does: CloudEvents in (binary mode, as kcat sends them),
reply events out."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from ferryman.codec import decode_event, encode_binary, header_value
from ferryman.publisher import KafkaPublisher
from storage_worker.app import StorageWorker
from storage_worker.settings import StorageWorkerSettings
from tests.integration.conftest import read_topic


@dataclass
class Reply:
    """One reply event."""

    type: str
    data: Any


@dataclass
class StorageHarness:
    """A running worker and a producer for it."""

    worker: StorageWorker
    settings: StorageWorkerSettings
    publisher: KafkaPublisher
    bootstrap: str

    async def send(
        self,
        operation: str,
        data: Any,
        *,
        tenant: str | None = "acme",
        request_id: str | None = None,
    ) -> str:
        """Publish `ferryman.storage.<operation>.requested`; return its id."""
        request_id = request_id or uuid.uuid4().hex
        attributes: dict[str, Any] = {
            "id": request_id,
            "type": f"ferryman.storage.{operation}.requested",
            "source": "/test",
            "datacontenttype": "application/json",
        }
        if tenant is not None:
            attributes["tenant"] = tenant
        headers, value = encode_binary(attributes, json.dumps(data).encode())
        await self.publisher.send_and_wait(
            self.settings.request_topic, value, key=request_id.encode(), headers=headers
        )
        return request_id

    async def result(self, request_id: str, timeout: float = 60.0) -> Reply:
        """The (first) terminal reply to `request_id`."""
        return (await self.replies(request_id, count=1, timeout=timeout))[0]

    async def replies(self, request_id: str, *, count: int, timeout: float = 60.0) -> list[Reply]:
        """The first `count` terminal replies to `request_id` (a redelivered request gets
        one per run)."""

        def terminal(record: Any) -> bool:
            kind = header_value(record.headers, "ce_type") or ""
            mine = header_value(record.headers, "ce_correlationid") == request_id
            return mine and (kind.endswith(".completed") or kind.endswith(".failed"))

        records = await read_topic(
            self.bootstrap,
            self.settings.default_reply_topic,
            until=lambda records: sum(1 for r in records if terminal(r)) >= count,
            timeout=timeout,
        )
        found = [decode_event(list(r.headers), r.value) for r in records if terminal(r)]
        return [Reply(type=event.type, data=event.data) for event in found[:count]]

    async def call(self, operation: str, data: Any, **options: Any) -> Reply:
        """Send a request and wait for its terminal reply."""
        return await self.result(await self.send(operation, data, **options))

    async def put(self, key: str, content: bytes, **fields: Any) -> Reply:
        """Put `content` inline under `key` (tenant `acme` unless `tenant=` says otherwise)."""
        tenant = fields.pop("tenant", "acme")
        data = {"key": key, "content_base64": base64.b64encode(content).decode(), **fields}
        return await self.call("put", data, tenant=tenant)

    async def events(self, until: int) -> list[Any]:
        """The first `until` object events."""
        records = await read_topic(self.bootstrap, self.settings.events_topic, until=until)
        return [decode_event(list(r.headers), r.value) for r in records]


@asynccontextmanager
async def running_storage_worker(
    bootstrap: str,
    unique: str,
    tmp_path: Path,
    *,
    policy: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> AsyncIterator[StorageHarness]:
    """A storage_worker with every topic unique to the test: without `policy`, the local
    backend under `tmp_path/storage`, each tenant in its own folder."""
    prefix = f"t-{unique}"
    policy_file: Path | None = None
    if policy is not None:
        policy_file = tmp_path / "policy.json"
        policy_file.write_text(json.dumps(policy))
    settings = StorageWorkerSettings(
        kafka_bootstrap_servers=bootstrap,
        request_topic=f"{prefix}.storage.requests",
        default_reply_topic=f"{prefix}.storage.results",
        events_topic=f"{prefix}.storage.events",
        usage_topic=f"{prefix}.usage",
        health_topic=f"{prefix}.health",
        group_id=f"g-{unique}",
        topic_partitions=2,
        instance_id=unique,
        local_root=tmp_path / "storage",
        policy_file=policy_file,
        policy_poll_interval=0.1,
        **overrides,
    )
    worker = StorageWorker(settings, registry=CollectorRegistry(), environ=environ)
    await worker.worker.start()
    publisher = KafkaPublisher(bootstrap, client_id=f"test-{unique}")
    await publisher.start()
    try:
        yield StorageHarness(worker, settings, publisher, bootstrap)
    finally:
        await publisher.stop()
        await worker.worker.stop()
