"""Messaging spans of Kafka hops and the W3C trace context events carry.

A request's `ce_traceparent`/`ce_tracestate` (the CloudEvents distributed-tracing extension)
is the parent of the worker's `process <topic>` CONSUMER span; events the worker publishes
carry the context of the span current when they are sent, so the next hop continues the
trace instead of echoing the producer's. Names and attributes follow the OpenTelemetry
messaging conventions (`{operation} {destination}`, `messaging.*`).

Spans never record exceptions (their messages may quote upstream text, keys or secrets): a
failure sets the status to ERROR and `error.type` to a low-cardinality name of the failure
(`error_type_of`). `traced_span` is the one place that does this for a span around a block.

A PRODUCER span is named after its topic only when the worker configured that topic; a reply
topic chosen by a producer is `send reply` (the topic stays in `messaging.destination.name`),
so span names stay few however many reply topics producers use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman.contracts.events import EXT_TRACEPARENT, EXT_TRACESTATE
from ferryman_runtime.sent_messages import REPLY

MESSAGING_SYSTEM = "kafka"

CANCELLED = ErrorCode.CANCELLED.value
"""`error.type` of a block ended by `asyncio.CancelledError` (the same word as the
`cancelled` outcome and error code)."""

_W3C = TraceContextTextMapPropagator()
_TRACE_EXTENSIONS = (EXT_TRACEPARENT, EXT_TRACESTATE)


def parent_context(traceparent: str | None, tracestate: str | None) -> Context:
    """The context whose span is the remote parent named by a request's trace extensions
    (an empty context, so a root span, when there is none or it is malformed)."""
    if not traceparent:
        return Context()
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return _W3C.extract(carrier, context=Context())


def trace_extensions(span_context: SpanContext) -> dict[str, str]:
    """`traceparent` (and `tracestate`, when there is one) of `span_context`; empty when it is
    not valid."""
    if not span_context.is_valid:
        return {}
    extensions = {
        EXT_TRACEPARENT: (
            f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}"
            f"-{span_context.trace_flags:02x}"
        )
    }
    state = span_context.trace_state.to_header()
    if state:
        extensions[EXT_TRACESTATE] = state
    return extensions


def with_current_trace(extensions: Mapping[str, str]) -> dict[str, str]:
    """`extensions` with the trace context replaced by the current span's; unchanged (an
    echo of the request's) when no span is current."""
    current = trace_extensions(trace.get_current_span().get_span_context())
    if not current:
        return dict(extensions)
    kept = {k: v for k, v in extensions.items() if k not in _TRACE_EXTENSIONS}
    return {**kept, **current}


def messaging_attributes(operation: str, topic: str) -> dict[str, str | int]:
    """The messaging attributes every `send` or `process` span on `topic` has."""
    return {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.name": operation,
        "messaging.operation.type": operation,
        "messaging.destination.name": topic,
    }


def error_type_of(exc: BaseException) -> str:
    """`error.type` of a failure: a `FerrymanError`'s code, `cancelled` for a cancelled task,
    otherwise the exception's class name. Never its message: it may quote an upstream, a key
    or a secret."""
    if isinstance(exc, FerrymanError):
        return str(exc.code)
    if isinstance(exc, asyncio.CancelledError):
        return CANCELLED
    return type(exc).__qualname__


@contextmanager
def traced_span(
    tracer: trace.Tracer,
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, AttributeValue] | None = None,
    context: Context | None = None,
) -> Generator[trace.Span, None, None]:
    """A current span around the block; when the block raises, the span is ERROR with
    `error.type` from `error_type_of` and the exception is not recorded.

    Args:
        tracer: where the span goes.
        name: the span's name (low-cardinality: no ids, no producer-chosen values).
        kind: the span's kind.
        attributes: the span's attributes at its start.
        context: the parent's context (default: the current one).

    Raises:
        BaseException: whatever the block raises, unchanged.
    """
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=kind,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            mark_failed(span, error_type_of(exc))
            raise


@contextmanager
def producer_span(
    tracer: trace.Tracer,
    topic: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    configured: bool,
) -> Generator[trace.Span, None, None]:
    """A current PRODUCER span of sending to `topic`: `send <topic>` when the worker
    configured `topic`, `send reply` when a producer chose it; ERROR (with `error.type`) when
    the body raises.

    Raises:
        BaseException: whatever the body raises, unchanged.
    """
    destination = topic if configured else REPLY  # as in `messaging_client_sent_messages`
    with traced_span(
        tracer,
        f"send {destination}",
        kind=SpanKind.PRODUCER,
        attributes={**messaging_attributes("send", topic), **(attributes or {})},
    ) as span:
        yield span


def mark_failed(span: trace.Span, error_type: str, description: str | None = None) -> None:
    """Set `span`'s status to ERROR with `error.type` (a low-cardinality code or type name)."""
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, description or error_type))
