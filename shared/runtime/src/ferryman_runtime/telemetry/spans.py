"""Messaging spans of Kafka hops and the W3C trace context events carry.

A request's `ce_traceparent`/`ce_tracestate` (the CloudEvents distributed-tracing extension)
is the parent of the worker's `process <topic>` CONSUMER span; events the worker publishes
carry the context of the span current when they are sent, so the next hop continues the
trace instead of echoing the producer's. Names and attributes follow the OpenTelemetry
messaging conventions (`{operation} {destination}`, `messaging.*`).

Spans never record exceptions (their messages may quote upstream text): a failure sets the
status to ERROR with the exception's type or the reply's error code.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ferryman.contracts.events import EXT_TRACEPARENT, EXT_TRACESTATE

MESSAGING_SYSTEM = "kafka"

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


@contextmanager
def producer_span(
    tracer: trace.Tracer, topic: str, attributes: Mapping[str, str | int] | None = None
) -> Generator[trace.Span, None, None]:
    """A current `send <topic>` PRODUCER span; ERROR (with `error.type`) when the body raises.

    Raises:
        BaseException: whatever the body raises, unchanged.
    """
    with tracer.start_as_current_span(
        f"send {topic}",
        kind=SpanKind.PRODUCER,
        attributes={**messaging_attributes("send", topic), **(attributes or {})},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            mark_failed(span, type(exc).__qualname__)
            raise


def mark_failed(span: trace.Span, error_type: str, description: str | None = None) -> None:
    """Set `span`'s status to ERROR with `error.type` (a low-cardinality code or type name)."""
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, description or error_type))
