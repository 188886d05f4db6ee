"""Builds request events (CloudEvents attributes, extensions and the JSON payload) and the
cancel events that call them off."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import BaseModel

from ferryman.codec import Headers, encode_binary
from ferryman.contracts import events as ev
from ferryman.contracts.mcp import MCP_CANCEL_REQUESTED, CancelRequest
from ferryman.replies import ReplyRegistry

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_W3C = TraceContextTextMapPropagator()


@dataclass(frozen=True)
class RequestOptions:
    """Per-request options of `FerrymanClient.request_stream` and friends."""

    tenant: str | None = None
    """The `tenant` extension (quotas and fairness per tenant)."""
    traceparent: str | None = None
    """W3C trace context of the caller, so the worker's spans join its trace (default: the
    active OpenTelemetry span's, when the caller has one)."""
    tracestate: str | None = None
    expires_in: float | None = None
    """Seconds from now after which the worker must not start the work."""
    expires_at: datetime | None = None
    """The same as an aware point in time (give one of the two)."""

    def expiry(self, now: datetime) -> datetime | None:
        """The `expirytime` to send, in UTC.

        Raises:
            ValueError: both or malformed expiry options.
        """
        if self.expires_in is not None and self.expires_at is not None:
            raise ValueError("give expires_in or expires_at, not both")
        if self.expires_in is not None:
            if self.expires_in <= 0:
                raise ValueError(f"expires_in must be positive, not {self.expires_in}")
            return now.astimezone(UTC) + timedelta(seconds=self.expires_in)
        if self.expires_at is None:
            return None
        if self.expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        return self.expires_at.astimezone(UTC)


def encode_request(
    *,
    event_type: str,
    data: BaseModel | Mapping[str, Any],
    request_id: str,
    source: str,
    reply_topic: str,
    reply_token: str | None,
    options: RequestOptions,
    registry: ReplyRegistry,
    now: datetime,
) -> tuple[Headers, bytes]:
    """Return the Kafka headers and value of a binary-mode request event.

    A mapping `data` is validated with the request model registered for `event_type`.
    Without a `traceparent` option, the active OpenTelemetry span (if any) is the parent of
    the worker's span.

    Raises:
        pydantic.ValidationError: `data` is not valid for its registered request model.
        ValueError: an option is malformed.
    """
    attributes: dict[str, Any] = {
        "id": request_id,
        "type": event_type,
        "source": source,
        "datacontenttype": "application/json",
        ev.EXT_REPLY_TO: reply_topic,
    }
    expiry = options.expiry(now)
    if expiry is not None:
        attributes[ev.EXT_EXPIRY_TIME] = expiry.isoformat().replace("+00:00", "Z")
    if options.tenant is not None:
        attributes[ev.EXT_TENANT] = options.tenant
    if options.traceparent is not None:
        if not _TRACEPARENT.fullmatch(options.traceparent):
            raise ValueError(f"traceparent {options.traceparent[:80]!r} is not a W3C traceparent")
        attributes[ev.EXT_TRACEPARENT] = options.traceparent
        if options.tracestate is not None:
            attributes[ev.EXT_TRACESTATE] = options.tracestate
    else:
        attributes.update(_active_trace_context())
    if reply_token is not None:
        attributes[ev.EXT_REPLY_TOKEN] = reply_token
    return encode_binary(attributes, _payload(event_type, data, registry))


def _active_trace_context() -> dict[str, str]:
    """`traceparent`/`tracestate` of the active span; empty without one (or without an
    OpenTelemetry SDK, whose absence leaves the API's no-op spans)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return {
        name: carrier[name] for name in (ev.EXT_TRACEPARENT, ev.EXT_TRACESTATE) if name in carrier
    }


def _payload(
    event_type: str, data: BaseModel | Mapping[str, Any], registry: ReplyRegistry
) -> bytes:
    if isinstance(data, BaseModel):
        return data.model_dump_json(exclude_none=True, by_alias=True).encode()
    try:
        model = registry.kind(event_type).request_model
    except LookupError:
        model = None
    if model is None:
        return json.dumps(dict(data), separators=(",", ":")).encode()
    return model.model_validate(data).model_dump_json(exclude_none=True, by_alias=True).encode()


def encode_cancel(cancel: CancelRequest, *, source: str, now: datetime) -> tuple[Headers, bytes]:
    """Return the Kafka headers and value of a binary-mode `ferryman.mcp.cancel.requested`
    event carrying `cancel`, sent by `source` (publish it keyed by `cancel.request_id`)."""
    attributes: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "type": MCP_CANCEL_REQUESTED,
        "source": source,
        "time": now.astimezone(UTC),
        "datacontenttype": "application/json",
    }
    return encode_binary(attributes, cancel.model_dump_json(exclude_none=True).encode())
