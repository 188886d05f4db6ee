"""The settings and records of the Gemini cached-content registry (`gemini_cache`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from llm_worker.chat.accounting import UsageSink


@dataclass(frozen=True)
class GeminiCacheSettings:
    """How a client keeps its cached contents."""

    ttl_short: int = 300
    """Seconds for `short` retention or a `5m` breakpoint."""
    ttl_long: int = 3600
    """Seconds for `long` retention or a `1h` breakpoint."""
    max_entries: int = 256
    idle: float = 120.0
    """Seconds unused after which an entry is deleted."""
    sweep_every: float = 30.0
    min_margin: float = 60.0
    """Seconds an entry must still live for a call to start on it (at least)."""
    close_budget: float = 5.0
    """Seconds `aclose()` spends deleting entries."""
    wait_budget: float = 5.0
    """Seconds a call waits for a create or a refresh before it goes uncached (at most a
    quarter of its first-token timeout); the create or refresh goes on for later calls."""
    min_tokens: Mapping[str, int] = field(default_factory=dict[str, int])
    """Model pattern → smallest prefix worth caching (before `MIN_CACHE_TOKENS`)."""


@dataclass
class CachedPrefix:
    """One cached content this client created."""

    digest: str
    name: str
    model: str
    ttl: int
    expire_at: float
    tokens: int
    tenant: str | None
    request_id: str | None
    usage: UsageSink | None
    last_used: float
    accounted_until: float


@dataclass(frozen=True)
class Lease:
    """A cached content one call may use."""

    digest: str
    name: str
    written: int | None
    """Tokens this call wrote (it created the cached content), else None."""
