"""The span and log context of one request record: `process <topic>`, a CONSUMER span whose
parent is the request's `ce_traceparent`/`ce_tracestate`."""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager

from aiokafka import ConsumerRecord  # pyright: ignore[reportMissingTypeStubs]
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from ferryman.codec import MAX_ATTRIBUTE_LENGTH
from ferryman.contracts.events import EXT_TENANT, EXT_TRACEPARENT, EXT_TRACESTATE
from ferryman_runtime.telemetry.logs import log_context
from ferryman_runtime.telemetry.spans import messaging_attributes, parent_context, traced_span

_ID, _TENANT, _TRACEPARENT, _TRACESTATE = (
    f"ce_{name}" for name in ("id", EXT_TENANT, EXT_TRACEPARENT, EXT_TRACESTATE)
)
_WANTED = frozenset((_ID, _TENANT, _TRACEPARENT, _TRACESTATE))


@contextmanager
def consumer_span(
    tracer: trace.Tracer,
    record: ConsumerRecord[bytes, bytes],
    *,
    attempt: int = 1,
    group_id: str | None = None,
) -> Generator[trace.Span, None, None]:
    """Within the block, the record's `process <topic>` span is current (ERROR when the
    block raises) and log lines name its request id and tenant.

    The headers are read raw, so a record that does not decode still gets its span.

    Raises:
        BaseException: whatever the block raises, unchanged.
    """
    found: dict[str, str] = {}
    for key, value in record.headers:
        name = key.lower()
        if value and name in _WANTED:  # aiokafka passes None for a null header value
            found[name] = value.decode("utf-8", errors="replace")
    request_id = _bounded(found.get(_ID))
    tenant = _bounded(found.get(_TENANT))
    attributes = messaging_attributes("process", record.topic)
    attributes["messaging.destination.partition.id"] = str(record.partition)
    attributes["messaging.kafka.offset"] = record.offset
    if group_id:
        attributes["messaging.consumer.group.name"] = group_id
    if request_id is not None:
        attributes["messaging.message.id"] = request_id
    if tenant is not None:
        attributes["ferryman.tenant"] = tenant
    if attempt > 1:
        attributes["ferryman.delivery_attempt"] = attempt
    # Request topics are the worker's own (configured), so the topic may name the span.
    with (
        traced_span(
            tracer,
            f"process {record.topic}",
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            context=parent_context(found.get(_TRACEPARENT), found.get(_TRACESTATE)),
        ) as span,
        log_context(request_id, tenant),
    ):
        yield span


def _bounded(value: str | None) -> str | None:
    return value if value is not None and len(value) <= MAX_ATTRIBUTE_LENGTH else None
