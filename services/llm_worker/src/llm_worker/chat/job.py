"""One chat request and its progress, the shared resilience state, and the errors that end
a request for reasons of its own (quota, deadline, attempt budget) rather than a provider's."""

from __future__ import annotations

import math
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from ferryman.contracts.llm import AttemptInfo
from ferryman_runtime.resilience import Breakers, RetryPolicy
from ferryman_runtime.upstreams.cooldowns import Cooldowns
from ferryman_runtime.upstreams.quotas import QuotaBook
from ferryman_runtime.upstreams.stats import StatsBoard
from llm_worker.chat.accounting import UsageTally
from llm_worker.chat.calls import StreamProgress
from llm_worker.chat.replies import ChatReplies
from llm_worker.routing.plan import AttemptPlan
from llm_worker.routing.table import RoutingTable


@dataclass(frozen=True)
class ChatJob:
    """One request to execute and where its results go."""

    request: ChatRequest
    replies: ChatReplies
    deadline: float | None = None
    """When the answer must be complete (the request's expiry), if ever: a time on the
    service's clock (by default the event loop's, `loop.time()`)."""
    tenant: str | None = None
    tenant_share: float = 1.0
    """This replica's share of the tenant's quota (see `QuotaBook`)."""
    key: tuple[str, str] = ("", "")
    """(`ce_source`, `ce_id`) of the request: what cancels and the tool loop's journal name."""
    step: int | None = None
    """In a tool loop: the model turn this job serves."""
    traceparent: str | None = None
    """The request's trace context, passed on to the tool calls it makes."""
    unresolved: ChatRequest | None = None
    """The request as sent, when `request` has its dataref parts resolved (presigned URLs
    differ from run to run: what identifies the request is this)."""
    tally: UsageTally = field(default_factory=UsageTally, compare=False)
    """What the request used so far (shared by the jobs of its tool-loop turns)."""


@dataclass
class Resilience:
    """The shared state and policies every request uses (one per worker).

    Args:
        breakers: one circuit breaker per deployment (direct `provider/model` ones are
            bounded in number, see `Breakers`).
        retry: backoff and the default calls per deployment.
        attempt_budget: default calls per request across deployments.
        restart_streams: whether direct (unrouted) streams restart after chunks.
        deployment_quotas: outbound limits per deployment.
        tenant_quotas: inbound limits per tenant.
        share: this replica's share of every outbound limit (assigned partitions ÷ all).
        stats: per-deployment load and latency (direct requests: per provider, `provider/*`).
        cooldowns: Retry-After holds per deployment (direct ones bounded in number).
    """

    breakers: Breakers | None = None
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_attempts=1))
    attempt_budget: int = 6
    restart_streams: bool = True
    deployment_quotas: QuotaBook = field(default_factory=QuotaBook)
    tenant_quotas: QuotaBook = field(default_factory=QuotaBook)
    share: Callable[[], float] = lambda: 1.0
    stats: StatsBoard = field(default_factory=StatsBoard)
    cooldowns: Cooldowns = field(default_factory=Cooldowns)


@dataclass
class RequestState:
    """The progress of one request through its plan."""

    job: ChatJob
    table: RoutingTable
    plan: AttemptPlan
    alias: str
    deadline: float | None
    budget: int
    started: float = field(default_factory=time.monotonic)
    log: list[AttemptInfo] = field(default_factory=list[AttemptInfo])
    calls: Tally[str] = field(default_factory=Tally[str])
    progress: StreamProgress = field(default_factory=StreamProgress)
    last_error: FerrymanError | None = None
    left: str | None = None
    """The deployment the request last gave up on (a failover is counted when another is tried)."""
    degraded: bool = False
    waiting_announced: bool = False
    """A `waiting_quota` progress event was published for this request (or turn)."""
    record: bool = False
    """Keep the answer's deltas (`CallResult.chunks`): the response cache stores them."""


def over_quota_error(what: str, wait: float) -> FerrymanError:
    """`rate_limited`: `what` is over a quota that frees up only after `wait` seconds."""
    return FerrymanError(
        ErrorCode.RATE_LIMITED,
        f"{what} and no budget frees up before the request's deadline",
        retryable=True,
        retry_after=None if wait == math.inf else wait,
    )


def deadline_error(state: RequestState, name: str) -> FerrymanError:
    """`timeout`: the deadline passed before deployment `name` could be called."""
    last = state.last_error
    after = f" (after {last.code}: {last.message})" if last is not None else ""
    return FerrymanError(
        ErrorCode.TIMEOUT,
        f"the request's deadline passed before {name} could be called{after}",
        retryable=True,
    )


def budget_error(state: RequestState) -> FerrymanError:
    """`unavailable`: the request's attempt budget is spent."""
    return FerrymanError(
        ErrorCode.UNAVAILABLE,
        f"the request's attempt budget ({state.budget} calls) is spent",
        retryable=True,
    )
