"""Health reports: the `data` of `ferryman.health.reported` events on the health topic."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

HealthStatus = Literal["healthy", "degraded", "unhealthy"]
"""`healthy`: serving normally. `degraded`: serving, but failing or slow often enough to
notice. `unhealthy`: not serving (circuit open, or the active probe fails)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeploymentHealth(_Strict):
    """One deployment as one worker replica sees it."""

    deployment: str
    provider: str
    model: str
    status: HealthStatus
    circuit: Literal["closed", "open", "half-open"]
    in_flight: int = Field(ge=0)
    """Calls running on this replica right now."""
    recent_calls: int = Field(ge=0)
    """Calls that ended in the passive window (real traffic)."""
    error_rate: float = Field(ge=0.0, le=1.0)
    """Share of `recent_calls` that failed with a retryable (upstream) error."""
    first_token_ms: float | None = Field(default=None, ge=0)
    """Exponentially weighted average time to first token, when known."""
    probe: Literal["ok", "failed", "not_run"] = "not_run"
    """The last active probe (an unbilled model listing), never a completion."""
    probe_error: str | None = None
    probe_at: datetime | None = None


class HealthReport(_Strict):
    """A replica's periodic report."""

    service: str
    instance: str
    reported_at: datetime
    routing_version: str | None = None
    """Hash of the routing configuration the replica serves (see the README)."""
    deployments: list[DeploymentHealth]
