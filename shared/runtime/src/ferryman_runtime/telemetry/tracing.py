"""The worker process's tracer provider, configured by the standard `OTEL_*` variables.

Tracing is off unless the environment asks for an exporter: `OTEL_TRACES_EXPORTER` (other
than `none`), `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`. Off, no
provider is installed and every span the code starts is the API's no-op (which still carries
the request's trace context through, so replies keep echoing it).

The kit decides from the environment it is given (read once at the entry point): on or off,
the exporters, the endpoint, the service name and resource, and the sampler. The exporter's
remaining options (headers, timeout, compression, certificates) and the batch processor's
(`OTEL_BSP_*`) are read by the OpenTelemetry SDK itself, from the process environment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)

from ferryman_runtime.redaction import redact

logger = logging.getLogger(__name__)

DEFAULT_TRACES_ENDPOINT = "http://localhost:4318/v1/traces"
"""Where OTLP/HTTP spans go when only `OTEL_TRACES_EXPORTER=otlp` is set."""

SHUTDOWN_TIMEOUT_MILLIS = 5_000
"""How long stopping waits for the last spans to be exported."""

_EXPORTERS = ("otlp", "console")
_FIXED_SAMPLERS: dict[str, Sampler] = {
    "always_on": ALWAYS_ON,
    "always_off": ALWAYS_OFF,
    "parentbased_always_on": DEFAULT_ON,
    "parentbased_always_off": DEFAULT_OFF,
}
_RATIO_SAMPLERS: dict[str, Callable[[float], Sampler]] = {
    "traceidratio": TraceIdRatioBased,
    "parentbased_traceidratio": ParentBasedTraceIdRatio,
}


class TracingConfigError(ValueError):
    """An `OTEL_*` variable holds a value the worker cannot use."""


@dataclass(frozen=True)
class TracingConfig:
    """What the `OTEL_*` variables ask for (see `from_environ`).

    Args:
        exporters: `otlp` and/or `console`; empty: tracing is off.
        endpoint: the OTLP/HTTP traces URL (`…/v1/traces`).
        service_name: `OTEL_SERVICE_NAME` (or `service.name` in the resource attributes);
            None: the worker's name.
        resource_attributes: `OTEL_RESOURCE_ATTRIBUTES`.
        sampler: from `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (default
            `parentbased_always_on`: a producer's sampling decision is kept).
    """

    exporters: tuple[str, ...] = ()
    endpoint: str = DEFAULT_TRACES_ENDPOINT
    service_name: str | None = None
    resource_attributes: Mapping[str, str] = field(default_factory=dict[str, str])
    sampler: Sampler = DEFAULT_ON

    @property
    def enabled(self) -> bool:
        """Whether spans are exported at all."""
        return bool(self.exporters)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> TracingConfig:
        """Read the standard variables from `environ`.

        Raises:
            TracingConfigError: an unknown exporter, a protocol other than `http/protobuf`,
                an unknown sampler or a sampler ratio that is not a number in [0, 1].
        """

        def get(name: str) -> str:
            return environ.get(name, "").strip()

        if get("OTEL_SDK_DISABLED").lower() == "true":
            return cls()
        traces_endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        base_endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT")
        named = [n.strip().lower() for n in get("OTEL_TRACES_EXPORTER").split(",") if n.strip()]
        if not named:
            named = ["otlp"] if traces_endpoint or base_endpoint else []
        exporters = tuple(dict.fromkeys(n for n in named if n != "none"))
        unknown = [n for n in exporters if n not in _EXPORTERS]
        if unknown:
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER={unknown[0]!r} is not supported (otlp, console or none)"
            )
        protocol = get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or get("OTEL_EXPORTER_OTLP_PROTOCOL")
        if "otlp" in exporters and protocol not in ("", "http/protobuf"):
            raise TracingConfigError(
                f"OTLP protocol {protocol!r} is not supported (the worker exports http/protobuf)"
            )
        if traces_endpoint:
            endpoint = traces_endpoint
        elif base_endpoint:
            endpoint = f"{base_endpoint.rstrip('/')}/v1/traces"
        else:
            endpoint = DEFAULT_TRACES_ENDPOINT
        attributes = _resource_attributes(get("OTEL_RESOURCE_ATTRIBUTES"))
        return cls(
            exporters=exporters,
            endpoint=endpoint,
            service_name=get("OTEL_SERVICE_NAME") or attributes.pop("service.name", None),
            resource_attributes=attributes,
            sampler=_sampler(get("OTEL_TRACES_SAMPLER").lower(), get("OTEL_TRACES_SAMPLER_ARG")),
        )


class Tracing:
    """An installed tracer provider; `shutdown` exports what is left and stops it."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider

    def shutdown(self) -> None:
        """Export the spans still queued (bounded by `SHUTDOWN_TIMEOUT_MILLIS`), then stop."""
        if not self.provider.force_flush(SHUTDOWN_TIMEOUT_MILLIS):
            logger.warning("some spans were not exported before the worker stopped")
        self.provider.shutdown()


def install_tracing(
    config: TracingConfig,
    *,
    service_name: str,
    instance_id: str | None = None,
    exporters: list[SpanExporter] | None = None,
    install: Callable[[TracerProvider], None] = trace.set_tracer_provider,
) -> Tracing | None:
    """Build the process's tracer provider and make it the global one; None when tracing is
    off (nothing is installed).

    Args:
        config: from `TracingConfig.from_environ`.
        service_name: `service.name` unless the environment names one (the worker's name).
        instance_id: `service.instance.id` (the replica), unless the environment sets it.
        exporters: replaces the configured exporters (tests).
        install: makes the provider global (tests pass their own).
    """
    if not config.enabled:
        return None
    attributes: dict[str, str] = {"service.name": config.service_name or service_name}
    if instance_id:
        attributes["service.instance.id"] = instance_id
    attributes.update(config.resource_attributes)
    provider = TracerProvider(resource=Resource.create(attributes), sampler=config.sampler)
    for exporter in exporters if exporters is not None else _exporters(config):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    logger.info(
        "tracing on: %s spans to %s",
        attributes["service.name"],
        # The endpoint may carry credentials (`https://user:password@host`, `?token=…`).
        ", ".join(redact(config.endpoint) if name == "otlp" else name for name in config.exporters),
    )
    return Tracing(provider)


def _exporters(config: TracingConfig) -> list[SpanExporter]:
    built: list[SpanExporter] = []
    for name in config.exporters:
        built.append(
            OTLPSpanExporter(endpoint=config.endpoint) if name == "otlp" else ConsoleSpanExporter()
        )
    return built


def _resource_attributes(raw: str) -> dict[str, str]:
    """`key=value,key=value` (values percent-encoded); malformed pairs are skipped."""
    attributes: dict[str, str] = {}
    for pair in raw.split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = unquote(value.strip())
    return attributes


def _sampler(name: str, argument: str) -> Sampler:
    if not name:
        return DEFAULT_ON
    fixed = _FIXED_SAMPLERS.get(name)
    if fixed is not None:
        return fixed
    ratio_sampler = _RATIO_SAMPLERS.get(name)
    if ratio_sampler is None:
        known = ", ".join([*_FIXED_SAMPLERS, *_RATIO_SAMPLERS])
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER={name!r} is not one of {known}")
    try:
        ratio = float(argument) if argument else 1.0
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise TracingConfigError(
            f"OTEL_TRACES_SAMPLER_ARG={argument[:40]!r} is not a ratio between 0 and 1"
        )
    return ratio_sampler(ratio)
