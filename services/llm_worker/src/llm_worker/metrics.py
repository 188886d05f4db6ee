"""The LLM worker's Prometheus metrics.

Labels stay low-cardinality: `alias` is a configured route name (or `direct` for
`provider/model` requests), `deployment` a configured deployment name (or `provider/*`
for direct requests), `outcome` `completed` or an error code. Never a request id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class LlmMetrics:
    """Requests, attempts, retries, failovers, restarts, latencies, tokens and quota waits."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "llm_worker_requests_total",
            "Chat requests by alias, serving deployment (`none` if none served) and outcome.",
            ["alias", "deployment", "outcome"],
            registry=registry,
        )
        self.attempts = Counter(
            "llm_worker_attempts_total",
            "Provider calls by deployment and outcome (`completed` or the error code).",
            ["deployment", "outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "llm_worker_retries_total",
            "Calls repeated on the same deployment after a retryable failure.",
            ["deployment"],
            registry=registry,
        )
        self.failovers = Counter(
            "llm_worker_failovers_total",
            "Requests that left a deployment for another one, by the error that caused it.",
            ["deployment", "reason"],
            registry=registry,
        )
        self.restarts = Counter(
            "llm_worker_stream_restarts_total",
            "Streams restarted after chunks were published (a `restarted` event was sent).",
            ["deployment"],
            registry=registry,
        )
        self.chunks = Counter(
            "llm_worker_stream_chunks_total",
            "Chunk events published.",
            ["deployment"],
            registry=registry,
        )
        self.first_token = Histogram(
            "llm_worker_time_to_first_token_seconds",
            "From the start of a call to its first streamed token.",
            ["deployment"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "llm_worker_request_duration_seconds",
            "From the start of work to the terminal event.",
            ["alias", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "llm_worker_tokens_total",
            "Tokens reported by providers for serving calls.",
            ["deployment", "direction"],
            registry=registry,
        )
        self.quota_waits = Counter(
            "llm_worker_quota_waits_total",
            "Times a request waited (backpressure) because every usable deployment or its "
            "tenant was at a limit, by what it waited for.",
            ["reason"],
            registry=registry,
        )
        self.tool_calls = Counter(
            "llm_worker_tool_calls_total",
            "Tool calls of tool loops, by MCP server and outcome (`completed`, `tool_error`, "
            "an error code, or `replayed` when a rerun found the result).",
            ["server", "outcome"],
            registry=registry,
        )
        self.tool_call_duration = Histogram(
            "llm_worker_tool_call_duration_seconds",
            "From sending a tool call to its result, as the LLM worker sees it.",
            ["server"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.loop_steps = Counter(
            "llm_worker_tool_loop_steps_total",
            "Model turns of tool loops (`replayed`: taken from an earlier run's journal).",
            ["kind"],
            registry=registry,
        )
