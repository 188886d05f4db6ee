"""The LLM worker's Prometheus metrics (docs/operations.md has the whole scheme).

Provider calls are measured with the OpenTelemetry GenAI families under their Prometheus
names (`gen_ai_client_*`), so GenAI dashboards work unchanged; requests and their
durations go to the kit's `ferryman_requests_total` family.

Labels stay low-cardinality: `upstream` is a configured deployment name (or `provider/*`
for direct requests), `gen_ai_request_model` a configured model (or `provider/*`) through
the models `LabelBudget`, tenants go through the tenants `LabelBudget`, `server` is an MCP
server offered by the catalog. Never a request id, a user or a tool name.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ferryman_runtime.metric_labels import LabelBudget
from ferryman_runtime.metrics import QuotaMetrics, RequestMetrics

OPERATION_DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
"""OTel GenAI semconv's advice for `gen_ai.client.operation.duration` (and first chunk)."""

TOKEN_USAGE_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
"""OTel GenAI semconv's advice for `gen_ai.client.token.usage`."""

MAX_MODELS = 20
"""Unconfigured `gen_ai_request_model` values a process labels by name (then `other`)."""

MAX_TENANTS = 50
"""Unconfigured tenants a process labels by name by default (then `other`)."""

CHAT = "chat"
"""`gen_ai_operation_name` of provider calls."""

_GENAI = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"]

QUOTA_WAIT_PRECEDENCE = ("tenant", "circuit_open", "cooldown", "quota")
"""When several reasons hold a request for the same time, the one counted: the first here."""


class LlmMetrics:
    """Provider calls, tokens per call, tool calls, retries, failovers, stream restarts,
    quota waits and loop steps; plus the kit's request and quota-rejection families.

    Args:
        registry: where the families are registered.
        configured_models: the models of the configured deployments and aliases (labelled
            by name; other direct models are labelled `provider/*`).
        tenants: bounds `tenant` of quota rejections (default: nothing configured,
            `MAX_TENANTS`).
        requests: the kit's request families, when registered elsewhere already.

    Raises:
        ValueError: a family is already registered on `registry`.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        configured_models: Callable[[], Collection[str]] = frozenset,
        tenants: LabelBudget | None = None,
        requests: RequestMetrics | None = None,
    ) -> None:
        self._configured_models = configured_models
        self._models = LabelBudget(configured_models, max_dynamic=MAX_MODELS)
        self.tenants = tenants or LabelBudget(max_dynamic=MAX_TENANTS)
        self.requests = requests or RequestMetrics(registry)
        self.quota_rejections = QuotaMetrics(registry)
        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration: one provider call, from its start to its last byte or"
            " its failure (`error_type` empty on success).",
            [*_GENAI, "upstream", "error_type"],
            buckets=OPERATION_DURATION_BUCKETS,
            registry=registry,
        )
        self.first_chunk = Histogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Time from the start of a streamed provider call to its first chunk.",
            [*_GENAI, "upstream"],
            buckets=OPERATION_DURATION_BUCKETS,
            registry=registry,
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens used per provider call, by `gen_ai_token_type` (input, output).",
            [*_GENAI, "gen_ai_token_type"],
            buckets=TOKEN_USAGE_BUCKETS,
            registry=registry,
        )
        self.tool_duration = Histogram(
            "gen_ai_execute_tool_duration_seconds",
            "Tool calls of tool loops, from sending the call to its result, by MCP server"
            " (`error_type` empty when the call completed).",
            ["server", "error_type"],
            buckets=OPERATION_DURATION_BUCKETS,
            registry=registry,
        )
        self.tool_calls = Counter(
            "llm_worker_tool_calls_total",
            "Tool calls of tool loops, by MCP server (`none` if unknown) and outcome"
            " (`completed`, `tool_error`, an error code, or `replayed` when a rerun found the"
            " result).",
            ["server", "outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "llm_worker_retries_total",
            "Calls repeated on the same upstream after a retryable failure.",
            ["upstream"],
            registry=registry,
        )
        self.failovers = Counter(
            "llm_worker_failovers_total",
            "Requests that left an upstream for another one, by the error that caused it.",
            ["upstream", "reason"],
            registry=registry,
        )
        self.restarts = Counter(
            "llm_worker_stream_restarts_total",
            "Streams restarted after chunks were published (a `restarted` event was sent).",
            ["upstream"],
            registry=registry,
        )
        self.chunks = Counter(
            "llm_worker_stream_chunks_total",
            "Chunk events published, by the upstream that streamed them.",
            ["upstream"],
            registry=registry,
        )
        self.quota_waits = Counter(
            "llm_worker_quota_waits_total",
            "Times a request waited (backpressure) because its tenant or every usable"
            " deployment was at a limit, by the reason that held it: `tenant`,"
            " `circuit_open`, `cooldown` or `quota`.",
            ["reason"],
            registry=registry,
        )
        self.response_cache = ResponseCacheMetrics(registry)
        self.loop_steps = Counter(
            "llm_worker_tool_loop_steps_total",
            "Model turns of tool loops (`replayed`: taken from an earlier run's journal).",
            ["kind"],
            registry=registry,
        )

    def quota_wait(self, reasons: set[str]) -> str:
        """Count one wait held by `reasons` under the single reason that comes first in
        `QUOTA_WAIT_PRECEDENCE`; return it."""
        reason = next((r for r in QUOTA_WAIT_PRECEDENCE if r in reasons), None)
        reason = reason or min(reasons)
        self.quota_waits.labels(reason=reason).inc()
        return reason

    def model_label(self, provider: str, model: str, *, direct: bool) -> str:
        """`gen_ai_request_model` of a call of `model` at `provider`: the model when it is
        configured (every routed deployment's is), else `provider/*`; then bounded."""
        if direct and model not in self._configured_models():
            return self._models(f"{provider}/*")
        return self._models(model)


class ResponseCacheMetrics:
    """The response cache's families (docs/caching.md). `target` is a route alias or
    `direct`; every other label is one of a few fixed values.

    Args:
        registry: where the families are registered.

    Raises:
        ValueError: a family is already registered on `registry`.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self.lookups = Counter(
            "llm_worker_response_cache_lookups_total",
            "Response-cache lookups by route (`direct` for `provider/model` requests) and"
            " outcome: `hit`, `miss`, or `error` (timeout, backend error, open breaker:"
            " served as a miss).",
            ["target", "outcome"],
            registry=registry,
        )
        self.skips = Counter(
            "llm_worker_response_cache_skips_total",
            "Requests the response cache was on for but did not look up or store, by reason:"
            " `sampled`, `no_tenant`, `presigned`, `too_large`, `unfinished` or `tool_loop`.",
            ["reason"],
            registry=registry,
        )
        self.bytes = Counter(
            "llm_worker_response_cache_bytes_total",
            "Bytes of stored answers `served` (hits) and `stored`.",
            ["direction"],
            registry=registry,
        )
        self.invalidations = Counter(
            "llm_worker_response_cache_invalidations_total",
            "Invalidation events acted on, by scope (`tenant` or `all`).",
            ["scope"],
            registry=registry,
        )
        self.errors = Counter(
            "llm_worker_response_cache_errors_total",
            "Backend operations that failed (`get`, `put`, `invalidate`).",
            ["operation"],
            registry=registry,
        )

    def watch_store(self, entries: Callable[[], int], held_bytes: Callable[[], int]) -> None:
        """Report a per-replica store's size at scrape time (the `memory` backend; Redis
        reports its own).

        Raises:
            ValueError: a store is watched already.
        """
        Gauge(
            "llm_worker_response_cache_entries",
            "Answers held by this replica's in-memory response cache.",
            registry=self._registry,
        ).set_function(lambda: float(entries()))
        Gauge(
            "llm_worker_response_cache_held_bytes",
            "Bytes of answers held by this replica's in-memory response cache.",
            registry=self._registry,
        ).set_function(lambda: float(held_bytes()))


GEMINI_PROVIDER_UPSTREAM = "gemini/*"
"""The `upstream` label of the worker-wide Gemini client (dedicated clients: their
deployment's name)."""


@dataclass(frozen=True)
class GeminiCacheStats:
    """A Gemini client's cached-content registry, as plain numbers read at scrape time."""

    cached_contents: int
    """Cached contents alive now."""
    operations: Mapping[tuple[str, str], int] = field(default_factory=dict[tuple[str, str], int])
    """`(operation, outcome)` → count since start. Operations: `create`, `update`, `delete`,
    `recreate`; outcome `ok` or an error code."""


class GeminiCacheSource(Protocol):
    """A client that keeps Gemini cached contents (`GeminiChatModel`)."""

    def cache_stats(self) -> GeminiCacheStats:
        """The registry's numbers now."""
        ...


class GeminiCacheCollector(Collector):
    """`llm_worker_gemini_cached_contents{upstream}` and
    `llm_worker_gemini_cache_operations_total{upstream,operation,outcome}`, read from every
    client that has a cached-content registry when scraped.

    Args:
        providers: the worker-wide clients by provider (the `gemini` one is labelled
            `gemini/*`).
        deployments: the routing table's clients by deployment name, now (None: no table).
    """

    def __init__(
        self,
        providers: Mapping[str, object],
        deployments: Callable[[], Mapping[str, object] | None],
    ) -> None:
        self._providers = providers
        self._deployments = deployments

    def sources(self) -> Iterator[tuple[str, GeminiCacheSource]]:
        """Each client with a registry once, under its label."""
        seen: set[int] = set()
        labelled: list[tuple[str, object]] = []
        if (shared := self._providers.get("gemini")) is not None:
            labelled.append((GEMINI_PROVIDER_UPSTREAM, shared))
        labelled.extend((self._deployments() or {}).items())
        for label, client in labelled:
            if id(client) in seen or not callable(getattr(client, "cache_stats", None)):
                continue
            seen.add(id(client))
            yield label, _as_source(client)

    def describe(self) -> Iterable[Metric]:
        """The two families, empty (registration reads no client)."""
        return self._families()

    def collect(self) -> Iterable[Metric]:
        """The two families, from every registry now."""
        alive, operations = self._families()
        for label, source in self.sources():
            stats = source.cache_stats()
            alive.add_metric([label], stats.cached_contents)
            for (operation, outcome), count in sorted(stats.operations.items()):
                operations.add_metric([label, operation, outcome], count)
        return [alive, operations]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, CounterMetricFamily]:
        alive = GaugeMetricFamily(
            "llm_worker_gemini_cached_contents",
            "Gemini cached contents alive, per client (storage is billed while they live).",
            labels=["upstream"],
        )
        operations = CounterMetricFamily(
            "llm_worker_gemini_cache_operations",
            "Gemini cached-content operations (`create`, `update`, `delete`, `recreate`) by"
            " outcome (`ok` or an error code).",
            labels=["upstream", "operation", "outcome"],
        )
        return alive, operations


def _as_source(client: object) -> GeminiCacheSource:
    return cast(GeminiCacheSource, client)  # checked for `cache_stats` by the caller


def watch_gemini_caches(
    registry: CollectorRegistry,
    providers: Mapping[str, object],
    deployments: Callable[[], Mapping[str, object] | None],
) -> GeminiCacheCollector:
    """Register a `GeminiCacheCollector` on `registry`.

    Raises:
        ValueError: its families are already registered on `registry`.
    """
    collector = GeminiCacheCollector(providers, deployments)
    registry.register(collector)
    return collector


class UsageModels(LabelBudget):
    """`gen_ai_request_model` of the usage families (`provider/model`): a configured one by
    name, any other as `provider/*` (as the GenAI families label direct models), then
    bounded like any budget. The usage event itself keeps the model.

    Args:
        configured: the configured `provider/model` targets (deployments, aliases).
        max_dynamic: see `LabelBudget`.

    Raises:
        ValueError: `max_dynamic` is negative.
    """

    def __init__(self, configured: Callable[[], Collection[str]], *, max_dynamic: int) -> None:
        super().__init__(configured, max_dynamic=max_dynamic)
        self._configured = configured

    def __call__(self, value: str | None) -> str:
        if value and value not in self._configured():
            value = f"{value.partition('/')[0]}/*"
        return super().__call__(value)
