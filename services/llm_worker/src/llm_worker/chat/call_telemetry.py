"""One provider call as telemetry sees it: a `chat {model}` CLIENT span with the GenAI
semantic-convention attributes, and the `gen_ai_client_*` metrics.

The span carries who was called and what it cost, never message content: no prompt, no
answer, no tool arguments, and no provider error text (only its error code).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, runtime_checkable

from opentelemetry.trace import Span, SpanKind, Tracer

from ferryman.contracts import ChatCompleted
from ferryman_runtime.telemetry.spans import error_type_of, traced_span
from llm_worker.metrics import CHAT, LlmMetrics

GENAI_PROVIDER_NAMES = {"azure": "azure.ai.openai", "gemini": "gcp.gemini"}
"""Providers whose `gen_ai.provider.name` (semconv's well-known value) differs from ours."""


def genai_provider(provider: str) -> str:
    """`gen_ai.provider.name` of one of our providers (`azure` → `azure.ai.openai`)."""
    return GENAI_PROVIDER_NAMES.get(provider, provider)


@runtime_checkable
class HasServerAddress(Protocol):
    """A provider client that can say which host it calls for a model."""

    def server_address(self, model: str) -> str | None:
        """The host a call of `model` goes to (None: not known)."""
        ...


def server_address(client: object, model: str) -> str | None:
    """`server.address` of a call of `model` through `client`, when the client says."""
    if isinstance(client, HasServerAddress):
        return client.server_address(model)
    return None


@dataclass(frozen=True)
class CallLabels:
    """The metric labels of one provider call."""

    provider: str
    """`gen_ai_provider_name`."""
    model: str
    """`gen_ai_request_model`, already bounded."""
    upstream: str
    """The deployment name, or `provider/*` for a direct request."""

    def genai(self) -> tuple[str, str, str]:
        """(`gen_ai_operation_name`, `gen_ai_provider_name`, `gen_ai_request_model`)."""
        return CHAT, self.provider, self.model


class ObservedCall:
    """A context manager around one provider call: its span is current inside, and on exit
    the call's duration (and failure type, `error_type_of`, on the span too) is recorded.

    Args:
        tracer: where the span goes.
        metrics: where the GenAI metrics go.
        labels: the call's metric labels.
        model: the model name sent to the provider (`gen_ai.request.model` of the span).
        address: the provider's host (`server.address`), if known.
    """

    def __init__(
        self,
        tracer: Tracer,
        metrics: LlmMetrics,
        labels: CallLabels,
        model: str,
        address: str | None,
    ) -> None:
        self._metrics = metrics
        self._labels = labels
        attributes: dict[str, str] = {
            "gen_ai.operation.name": CHAT,
            "gen_ai.provider.name": labels.provider,
            "gen_ai.request.model": model,
            "ferryman.upstream": labels.upstream,
        }
        if address:
            attributes["server.address"] = address
        self._scope: AbstractContextManager[Span] = traced_span(
            tracer, f"{CHAT} {model}", kind=SpanKind.CLIENT, attributes=attributes
        )
        self._span: Span | None = None
        self._began = 0.0

    def __enter__(self) -> ObservedCall:
        self._span = self._scope.__enter__()
        self._began = time.monotonic()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        seconds = time.monotonic() - self._began
        error_type = "" if error is None else error_type_of(error)
        self._metrics.operation_duration.labels(
            *self._labels.genai(), self._labels.upstream, error_type
        ).observe(seconds)
        self._scope.__exit__(kind, error, traceback)  # marks the span failed the same way

    def completed(self, completed: ChatCompleted) -> None:
        """Record the answer's model, usage and finish reason (span and token histogram)."""
        usage = completed.usage
        if self._span is not None:
            self._span.set_attributes(
                {
                    "gen_ai.response.model": completed.model,
                    "gen_ai.usage.input_tokens": usage.input_tokens,
                    "gen_ai.usage.output_tokens": usage.output_tokens,
                    "gen_ai.response.finish_reasons": (completed.finish_reason,),
                }
            )
        tokens = self._metrics.token_usage
        tokens.labels(*self._labels.genai(), "input").observe(usage.input_tokens)
        tokens.labels(*self._labels.genai(), "output").observe(usage.output_tokens)
