"""Runs an mcp_worker in the test process on the real Kafka, with unique topics, and talks
to it the way a producer does: CloudEvents in, reply events out."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from ferryman.codec import decode_event, encode_binary, header_value
from ferryman.contracts.mcp import MCP_CANCEL_REQUESTED, MCP_TOOL_APPROVED, MCP_TOOL_CALL_REQUESTED
from ferryman.publisher import KafkaPublisher
from mcp_worker.app import McpWorker
from mcp_worker.settings import McpWorkerSettings
from tests.integration.conftest import read_topic

TERMINAL = (
    "ferryman.mcp.tool.call.completed",
    "ferryman.mcp.resource.read.completed",
    "ferryman.mcp.prompt.get.completed",
    "ferryman.mcp.catalog.list.completed",
    "ferryman.mcp.failed",
)


@dataclass
class Reply:
    """One reply event."""

    type: str
    data: Any
    headers: dict[str, str]


@dataclass
class McpHarness:
    """A running worker and a producer for it."""

    worker: McpWorker
    settings: McpWorkerSettings
    publisher: KafkaPublisher
    bootstrap: str
    registry_file: Path
    metrics: CollectorRegistry
    """The worker's Prometheus registry (read with `get_sample_value`)."""

    async def send(
        self,
        event_type: str,
        data: Any,
        *,
        request_id: str | None = None,
        tenant: str | None = None,
        **extensions: str,
    ) -> str:
        """Publish one request; return its id."""
        request_id = request_id or uuid.uuid4().hex
        attributes: dict[str, Any] = {
            "id": request_id,
            "type": event_type,
            "source": "/test",
            "datacontenttype": "application/json",
            **extensions,
        }
        if tenant is not None:
            attributes["tenant"] = tenant
        headers, value = encode_binary(attributes, json.dumps(data).encode())
        await self.publisher.send_and_wait(
            self.settings.request_topic, value, key=request_id.encode(), headers=headers
        )
        return request_id

    async def call(
        self, server: str, tool: str, arguments: dict[str, Any] | None = None, **options: Any
    ) -> str:
        """Publish a tool call; return its id."""
        data = {"server": server, "tool": tool, "arguments": arguments or {}}
        tenant = options.pop("tenant", None)
        data.update(options)
        return await self.send(MCP_TOOL_CALL_REQUESTED, data, tenant=tenant)

    async def call_with_id(
        self, request_id: str, server: str, tool: str, arguments: dict[str, Any] | None = None
    ) -> str:
        """Publish a tool call with a chosen id."""
        data = {"server": server, "tool": tool, "arguments": arguments or {}}
        return await self.send(MCP_TOOL_CALL_REQUESTED, data, request_id=request_id)

    async def replies(self, request_id: str, timeout: float = 60.0) -> list[Reply]:
        """Every reply to `request_id` up to and including its terminal one."""

        def mine(records: list[Any]) -> list[Any]:
            return [r for r in records if header_value(r.headers, "ce_correlationid") == request_id]

        def done(records: list[Any]) -> bool:
            return any(header_value(r.headers, "ce_type") in TERMINAL for r in mine(records))

        records = await read_topic(
            self.bootstrap, self.settings.default_reply_topic, until=done, timeout=timeout
        )
        out: list[Reply] = []
        for record in mine(records):
            event = decode_event(list(record.headers), record.value)
            headers = {k: v.decode() for k, v in record.headers if v is not None}
            out.append(Reply(type=event.type, data=event.data, headers=headers))
            if event.type in TERMINAL:
                break
        return out

    async def result(self, request_id: str, timeout: float = 60.0) -> Reply:
        """The terminal reply to `request_id`."""
        return (await self.replies(request_id, timeout))[-1]

    async def control(self, event_type: str, data: Any, key: str) -> None:
        """Publish a control event (cancel, approval)."""
        attributes: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "type": event_type,
            "source": "/test/operator",
            "datacontenttype": "application/json",
        }
        headers, value = encode_binary(attributes, json.dumps(data).encode())
        await self.publisher.send_and_wait(
            self.settings.control_topic, value, key=key.encode(), headers=headers
        )

    async def cancel(self, request_id: str, reason: str = "test") -> None:
        """Cancel a request by id."""
        data = {"request_id": request_id, "source": "/test", "reason": reason}
        await self.control(MCP_CANCEL_REQUESTED, data, request_id)

    async def approve(self, server: str, tool: str, digest: str) -> None:
        """Approve a tool definition."""
        data = {"server": server, "tool": tool, "definition_hash": digest}
        await self.control(MCP_TOOL_APPROVED, data, f"{server}/{tool}")

    async def topic(self, name: str, until: int | Callable[[list[Any]], bool]) -> list[Any]:
        """Records of one of the worker's topics (audit, catalog)."""
        return await read_topic(self.bootstrap, name, until=until)


@asynccontextmanager
async def running_mcp_worker(
    bootstrap: str,
    unique: str,
    registry_file: Path,
    *,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> AsyncIterator[McpHarness]:
    """An mcp_worker on `registry_file`, with every topic unique to the test (`environ`:
    where its credential references resolve; default the process environment)."""
    prefix = f"t-{unique}"
    settings = McpWorkerSettings(
        kafka_bootstrap_servers=bootstrap,
        request_topic=f"{prefix}.mcp.requests",
        default_reply_topic=f"{prefix}.mcp.results",
        control_topic=f"{prefix}.mcp.control",
        catalog_topic=f"{prefix}.mcp.catalog",
        audit_topic=f"{prefix}.mcp.audit",
        usage_topic=f"{prefix}.usage",
        health_topic=f"{prefix}.health",
        group_id=f"g-{unique}",
        topic_partitions=2,
        instance_id=unique,
        registry_file=registry_file,
        registry_poll_interval=0.1,
        packages_dir=registry_file.parent / "packages",
        **overrides,
    )
    metrics = CollectorRegistry()
    worker = McpWorker(settings, registry=metrics, environ=environ)
    await worker.worker.start()
    publisher = KafkaPublisher(bootstrap, client_id=f"test-{unique}")
    await publisher.start()
    try:
        yield McpHarness(worker, settings, publisher, bootstrap, registry_file, metrics)
    finally:
        await publisher.stop()
        await worker.worker.stop()
