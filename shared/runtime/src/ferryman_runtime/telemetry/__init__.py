"""Traces and logs: the OpenTelemetry setup of a worker process (`tracing`), the messaging
spans and W3C trace context of Kafka hops (`spans`), and opt-in JSON logs (`logs`)."""
