"""Sends a tool loop's tool calls to the mcp_worker, and cancels them.

A tool call's request id is derived from the chat request (source, id and digest), the step,
the call's index and the call itself, and its `ce_source` is the same on every replica: a
rerun of the chat request, on any replica, sends the same call under the same identity, so
the mcp_worker's dedupe and the journal's index both recognise it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from opentelemetry import trace

from ferryman.codec import encode_binary
from ferryman.contracts import ChatRequest
from ferryman.contracts import events as ev
from ferryman.contracts.llm import CompletedToolCall
from ferryman.contracts.mcp import (
    MCP_CANCEL_REQUESTED,
    MCP_CATALOG_LIST_REQUESTED,
    MCP_TOOL_CALL_REQUESTED,
    CancelRequest,
    CatalogListRequest,
    ToolCallRequest,
)
from ferryman.publisher import KafkaPublisher
from ferryman_runtime.telemetry.spans import producer_span, with_current_trace

TOOL_LOOP_SOURCE: Final = "/ferryman/llm-worker/tool-loop"
"""`ce_source` of every tool call a tool loop sends (the same on every replica)."""


def request_digest(request: ChatRequest) -> str:
    """sha256 of the request's data: a step recorded for another request under the same id
    (a reused id) is told apart."""
    return hashlib.sha256(request.model_dump_json(exclude_none=True).encode()).hexdigest()


def tool_request_id(
    source: str,
    request_id: str,
    step: int,
    index: int,
    *,
    digest: str,
    call: CompletedToolCall,
) -> str:
    """The id of call `index` of `step` of the chat request (`source`, `request_id`).

    The request's digest and the call itself are part of it: a step asked of the model
    again (its record forgotten) that makes a different call gets a different id, and the
    id cannot be guessed by anyone who does not know the conversation.
    """
    parts = (source, request_id, digest, str(step), str(index), call.name, call.arguments)
    hashed = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return f"tl-{hashed[:40]}-s{step}c{index}"


class ToolDispatcher:
    """Publishes tool-call requests and cancels.

    Args:
        publisher: the worker's producer (asked for when needed: it exists once the worker does).
        request_topic: the mcp_worker's request topic.
        reply_topic: the tool-loop topic the mcp_worker answers on.
        control_topic: the control topic cancels go to.
        tracer: starts the `send` span of each tool call (default: the global provider's).
    """

    def __init__(
        self,
        publisher: Callable[[], KafkaPublisher],
        *,
        request_topic: str,
        reply_topic: str,
        control_topic: str,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self._tracer = tracer or trace.get_tracer("llm_worker.tool_loop")
        self._publisher = publisher
        self._request_topic = request_topic
        self._reply_topic = reply_topic
        self._control_topic = control_topic

    async def send(
        self,
        request_id: str,
        call: ToolCallRequest | CatalogListRequest,
        *,
        tenant: str | None,
        expires_in: float,
        traceparent: str | None = None,
    ) -> None:
        """Publish one tool call (or a catalog listing) and wait for its acknowledgement.

        The request is sent in a `send <topic>` PRODUCER span and carries its trace context,
        so the mcp_worker's span continues this loop's trace; `traceparent` (the chat
        request's) is sent only when no span is current.

        Raises:
            aiokafka.errors.KafkaError: the request was not acknowledged.
        """
        expiry = datetime.now(UTC) + timedelta(seconds=max(expires_in, 0.001))
        event_type = (
            MCP_TOOL_CALL_REQUESTED
            if isinstance(call, ToolCallRequest)
            else MCP_CATALOG_LIST_REQUESTED
        )
        attributes: dict[str, Any] = {
            "id": request_id,
            "type": event_type,
            "source": TOOL_LOOP_SOURCE,
            "datacontenttype": "application/json",
            ev.EXT_REPLY_TO: self._reply_topic,
            ev.EXT_EXPIRY_TIME: expiry.isoformat().replace("+00:00", "Z"),
        }
        if tenant is not None:
            attributes[ev.EXT_TENANT] = tenant
        if traceparent is not None:
            attributes[ev.EXT_TRACEPARENT] = traceparent
        span_attributes = {"messaging.message.id": request_id, "cloudevents.event_type": event_type}
        # The mcp_worker's request topic is one of this worker's settings: it names the span.
        with producer_span(self._tracer, self._request_topic, span_attributes, configured=True):
            attributes = with_current_trace(attributes)
            data = call.model_dump_json(exclude_none=True).encode()
            headers, value = encode_binary(attributes, data)
            acked = await self._publisher().send(
                self._request_topic, value, key=request_id.encode(), headers=headers
            )
            await acked

    async def cancel(self, request_ids: list[str], reason: str) -> None:
        """Publish a cancel for each tool call and wait for their acknowledgements.

        Raises:
            aiokafka.errors.KafkaError: a cancel was not acknowledged.
        """
        pending = []
        for request_id in request_ids:
            attributes: dict[str, Any] = {
                "id": str(uuid.uuid4()),
                "type": MCP_CANCEL_REQUESTED,
                "source": TOOL_LOOP_SOURCE,
                "datacontenttype": "application/json",
            }
            payload = CancelRequest(request_id=request_id, source=TOOL_LOOP_SOURCE, reason=reason)
            headers, value = encode_binary(attributes, payload.model_dump_json().encode())
            pending.append(
                await self._publisher().send(
                    self._control_topic, value, key=request_id.encode(), headers=headers
                )
            )
        for acked in pending:
            await acked
