"""Opt-in JSON logs: one object per line with the service, the request's id and tenant, the
current trace and span ids, and credentials redacted."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ferryman_runtime.job import Job
from ferryman_runtime.telemetry.logs import JsonFormatter, RedactingFormatter, log_context
from tests.fakes.publisher import RawPublisher
from tests.unit.shared.test_tracing import TRACEPARENT, Echo, echo_pipeline, echo_record

SECRET = "sk-abcdefghijklmnopqrstuvwx"


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """What the `ferryman.test` and pipeline loggers write, formatted as JSON."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("echo_worker"))
    loggers = [logging.getLogger("ferryman.test"), logging.getLogger("ferryman_runtime")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield stream
    for logger in loggers:
        logger.removeHandler(handler)


def _parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_inside_a_request_carries_its_ids_and_no_secret(lines: io.StringIO) -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("test")

    with tracer.start_as_current_span("process requests") as span, log_context("r-1", "acme"):
        try:
            raise RuntimeError(f"upstream said: invalid key {SECRET}")
        except RuntimeError:
            logging.getLogger("ferryman.test").exception("call failed, Bearer %s", SECRET)

    [line] = _parsed(lines)
    context = span.get_span_context()
    assert line["level"] == "ERROR"
    assert line["logger"] == "ferryman.test"
    assert line["service"] == "echo_worker"
    assert line["request_id"] == "r-1"
    assert line["tenant"] == "acme"
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"
    assert line["message"] == "call failed, Bearer [REDACTED]"
    assert "RuntimeError" in line["exception"]
    assert SECRET not in lines.getvalue()
    assert line["time"].endswith("Z")


def test_a_line_outside_a_request_has_null_ids(lines: io.StringIO) -> None:
    logging.getLogger("ferryman.test").info("started")

    [line] = _parsed(lines)
    assert line["message"] == "started"
    assert line["service"] == "echo_worker"
    assert [line[k] for k in ("request_id", "tenant", "trace_id", "span_id")] == [None] * 4


class _Chatty:
    async def execute(self, job: Job[Echo]) -> None:
        logging.getLogger("ferryman.test").info("working on %s", job.request.text)
        await job.replies.finish("echo.done", job.request)


async def test_the_pipeline_sets_the_request_context_of_log_lines(lines: io.StringIO) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    pipeline = echo_pipeline(RawPublisher(), provider.get_tracer("test"))
    pipeline._service = _Chatty()  # pyright: ignore[reportPrivateUsage]

    await pipeline(echo_record(tenant="acme", traceparent=TRACEPARENT), 1)
    logging.getLogger("ferryman.test").info("after")

    working, after = _parsed(lines)
    [process] = [s for s in spans.get_finished_spans() if s.name == "process requests"]
    assert working["message"] == "working on hi"
    assert (working["request_id"], working["tenant"]) == ("e1", "acme")
    assert working["trace_id"] == TRACEPARENT.split("-")[1]
    process_context = process.get_span_context()
    assert process_context is not None
    assert working["span_id"] == f"{process_context.span_id:016x}"
    assert (after["request_id"], after["trace_id"]) == (None, None)


def test_text_lines_are_redacted_too() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "key %s", (SECRET,), None)

    assert "[REDACTED]" in RedactingFormatter().format(record)
    assert SECRET not in RedactingFormatter().format(record)


@pytest.mark.parametrize(("log_format", "is_json"), [("json", True), ("text", False)])
def test_configure_logging_writes_the_chosen_format_to_stderr(
    log_format: str, is_json: bool
) -> None:
    script = (
        "import logging; from ferryman_runtime.telemetry.logs import configure_logging; "
        f"configure_logging('info', {log_format!r}, service='llm_worker'); "
        f"logging.getLogger('x').info('hello %s', {SECRET!r}); "
        "logging.getLogger('x').debug('hidden')"
    )

    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )

    [line] = done.stderr.splitlines()
    assert SECRET not in line
    if is_json:
        parsed = json.loads(line)
        assert (parsed["service"], parsed["message"]) == ("llm_worker", "hello [REDACTED]")
    else:
        assert line.endswith("INFO x: hello [REDACTED]")
