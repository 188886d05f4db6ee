"""The routing file: deployments, routes (model aliases) and tenant quotas.

Loaded from YAML (`LLM_WORKER_ROUTING_FILE`) and hot-reloaded. A minimal file:

```yaml
deployments:
  openai-main: {provider: openai, model: gpt-4o-mini, weight: 3}
  haiku:       {provider: anthropic, model: claude-haiku-4-5}
routes:
  chat: {deployments: [openai-main], fallbacks: [cheap]}
  cheap: {deployments: [haiku]}
```

docs/llm-routing.md documents every key with a full example ("The routing file") and
explains timeouts, retries and stream restarts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ferryman_runtime.upstreams.quotas import QuotaLimits
from llm_worker.routing.capabilities import Capabilities

Strategy = Literal["weighted", "least_in_flight", "lowest_latency"]
"""How a route picks among its deployments: weighted random, fewest calls running on this
replica, or lowest moving average of time to first token (untried deployments first)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    """Seconds; unset fields fall back to the next level (deployment → route → worker)."""

    total: float | None = Field(default=None, gt=0)
    first_token: float | None = Field(default=None, gt=0)
    stream_idle: float | None = Field(default=None, gt=0)


class RetryBudget(_Strict):
    """How hard one request may try."""

    max_attempts: int | None = Field(default=None, ge=1)
    """Provider calls per request across all deployments (retries and failovers included)."""
    per_deployment: int | None = Field(default=None, ge=1)
    """Calls per request on one deployment (the first call plus its retries)."""
    wait_retry_after: float | None = Field(default=None, ge=0)
    """Seconds: a `Retry-After` up to this long is waited out and the same deployment
    called again (if the request's deadline allows) instead of failing over at once.
    Unset: fail over at once whenever another deployment can serve. Either way the
    deployment cools down for the other requests."""


class DeploymentLimits(_Strict):
    """Outbound limits of one deployment; they hold across all worker replicas."""

    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    """Tokens per minute, counted from the usage providers report."""
    max_concurrent: int | None = Field(default=None, ge=1)

    def quota(self) -> QuotaLimits:
        """These limits as a one-minute quota."""
        return QuotaLimits(
            requests=self.rpm, tokens=self.tpm, max_concurrent=self.max_concurrent, window=60.0
        )


class TenantLimits(_Strict):
    """Inbound limits of one tenant (the request's `tenant` extension)."""

    requests: int | None = Field(default=None, ge=1)
    tokens: int | None = Field(default=None, ge=1)
    window: float = Field(default=60.0, gt=0)
    """Seconds the `requests` and `tokens` budgets cover."""

    def quota(self) -> QuotaLimits:
        """These limits as a quota."""
        return QuotaLimits(requests=self.requests, tokens=self.tokens, window=self.window)


class DeploymentPromptCache(_Strict):
    """Provider prompt caching at one deployment (docs/caching.md)."""

    send: bool = True
    """False: strip every cache marker, key and retention before calling this deployment
    (OpenAI-compatible servers or API versions that reject the fields)."""
    min_tokens: int | None = Field(default=None, ge=1)
    """The smallest prompt prefix auto mode marks for caching here (default: the provider's
    minimum for the model)."""


class RoutePromptCache(_Strict):
    """Automatic prompt-cache breakpoints for a route's requests (docs/caching.md)."""

    auto: bool = False
    """Place breakpoints on requests that carry none (and do not say `auto: false`)."""
    retention: Literal["short", "long"] | None = None
    """The retention asked for when the request does not say."""


class RouteResponseCache(_Strict):
    """The worker's exact-match response cache for a route (docs/caching.md)."""

    enabled: bool = False
    ttl: int | None = Field(default=None, ge=1)
    """Seconds an answer is kept, unless the request asks for less (default: the worker's)."""
    max_ttl: int | None = Field(default=None, ge=1)
    """Seconds a request's own `ttl` may ask for at most."""
    cache_sampled: bool = False
    """Also cache requests that sample (no `temperature: 0` and no `seed`)."""
    namespace: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    """Part of the key, unless the request names one (change it to start afresh)."""


class Deployment(_Strict):
    """One provider model that can serve requests."""

    provider: str
    model: str
    weight: float = Field(default=1.0, gt=0)
    endpoint: str | None = None
    """The provider's base URL (Azure: the resource endpoint); default: the worker's."""
    credentials: str | None = Field(default=None, pattern=r"^(env|file):.+")
    """Where this deployment's API key is: `env:VARIABLE` or `file:/path` (never the key)."""
    limits: DeploymentLimits = Field(default_factory=DeploymentLimits)
    capabilities: Capabilities | None = None
    """What the model can do; default: the worker's capability table."""
    timeouts: Timeouts = Field(default_factory=Timeouts)
    prompt_cache: DeploymentPromptCache = Field(default_factory=DeploymentPromptCache)

    @property
    def target(self) -> str:
        """`provider/model`."""
        return f"{self.provider}/{self.model}"


class Route(_Strict):
    """An alias: its deployments, how to pick among them, and where to go when they fail."""

    deployments: list[str] = Field(min_length=1)
    strategy: Strategy = "weighted"
    fallbacks: list[str] = Field(default_factory=list)
    """Routes tried in order after this route's deployments."""
    larger_context: str | None = None
    """Route to use when a deployment says the input exceeds its context window."""
    content_filter: Literal["fail", "fallback"] = "fail"
    """`fail`: a content-filter refusal ends the request with the provider's reason.
    `fallback`: try the next deployment instead."""
    degraded: str | None = None
    """Route served (marked `degraded`) when nothing else can serve this alias."""
    restart_streams: bool = True
    """After chunks were published, restart a failed stream on the next deployment
    (announced by `ferryman.llm.chat.restarted`) instead of failing the request."""
    timeouts: Timeouts = Field(default_factory=Timeouts)
    retry: RetryBudget = Field(default_factory=RetryBudget)
    prompt_cache: RoutePromptCache = Field(default_factory=RoutePromptCache)
    response_cache: RouteResponseCache = Field(default_factory=RouteResponseCache)


class RoutingConfig(_Strict):
    """The routing file's content, validated (every reference resolves)."""

    deployments: dict[str, Deployment] = Field(default_factory=dict)
    routes: dict[str, Route] = Field(default_factory=dict)
    tenants: dict[str, TenantLimits] = Field(default_factory=dict)
    """Tenant → limits; `"*"` applies to every tenant not listed."""

    @model_validator(mode="after")
    def _check_references(self) -> RoutingConfig:
        for alias, route in self.routes.items():
            unknown = [d for d in route.deployments if d not in self.deployments]
            if unknown:
                raise ValueError(f"route {alias!r} names unknown deployments {unknown}")
            linked = [*route.fallbacks, route.larger_context, route.degraded]
            missing = [f for f in linked if f is not None and f not in self.routes]
            if missing:
                raise ValueError(f"route {alias!r} refers to unknown routes {missing}")
        return self

    @classmethod
    def parse(cls, data: bytes, source: str = "routing file") -> RoutingConfig:
        """Validate the YAML text of a routing file.

        Raises:
            ValueError: not YAML, or not a valid configuration (the message says where).
        """
        try:
            document = yaml.safe_load(data) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{source} is not valid YAML: {exc}") from exc
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            raise ValueError(f"{source} is invalid: {exc}") from exc

    @classmethod
    def load(cls, path: Path) -> RoutingConfig:
        """Read and validate a routing file.

        Raises:
            ValueError: the file cannot be read or is not a valid configuration.
        """
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"routing file {path}: {exc.strerror}") from exc
        return cls.parse(data, f"routing file {path}")

    def tenant_quotas(self) -> tuple[dict[str, QuotaLimits], QuotaLimits | None]:
        """`(per tenant, default)` quotas for `QuotaBook.set_limits`."""
        default = self.tenants.get("*")
        named = {name: limits.quota() for name, limits in self.tenants.items() if name != "*"}
        return named, default.quota() if default else None

    def deployment_quotas(self) -> dict[str, QuotaLimits]:
        """Quotas per deployment name."""
        return {name: d.limits.quota() for name, d in self.deployments.items()}
