"""Health reports: the `data` of `ferryman.health.reported` events on the health topic.

One report shape for every worker: each upstream it calls (an LLM deployment, an MCP
server, a storage backend) with its status as this replica sees it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

HealthStatus = Literal["healthy", "degraded", "unhealthy"]
"""`healthy`: serving normally. `degraded`: serving, but failing or slow often enough to
notice. `unhealthy`: not serving (circuit open, or the active probe fails)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UpstreamHealth(_Strict):
    """One upstream as one worker replica sees it."""

    name: str
    """The upstream's configured name (an LLM deployment, an MCP server, a bucket)."""
    kind: str
    """What it is: `llm`, `mcp`, `storage`, …"""
    status: HealthStatus
    circuit: Literal["closed", "open", "half-open"]
    in_flight: int = Field(ge=0)
    """Calls running on this replica right now."""
    recent_calls: int = Field(ge=0)
    """Calls that ended in the passive window (real traffic)."""
    error_rate: float = Field(ge=0.0, le=1.0)
    """Share of `recent_calls` that failed with a retryable (upstream) error."""
    latency_ms: float | None = Field(default=None, ge=0)
    """Exponentially weighted average latency (time to first token for LLM deployments)."""
    labels: dict[str, str] = Field(default_factory=dict)
    """What else identifies it (`provider`, `model`, `transport`, …)."""
    probe: Literal["ok", "failed", "not_run"] = "not_run"
    """The last active probe (cheap and unbilled: a model or tool listing)."""
    probe_error: str | None = None
    probe_at: datetime | None = None


class HealthReport(_Strict):
    """A replica's periodic report."""

    service: str
    instance: str
    reported_at: datetime
    config_version: str | None = None
    """Hash of the hot-reloaded configuration the replica serves (the LLM routing file)."""
    upstreams: list[UpstreamHealth]
