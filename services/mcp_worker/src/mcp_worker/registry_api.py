"""The registry keys of an API entry (`type: openapi`): which operations become tools, the
credentials of its security schemes, and its rate limits."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ferryman_runtime.upstreams.quotas import QuotaLimits
from mcp_worker.references import is_reference

_SECRET_FIELDS = ("value", "password", "client_secret")

HttpMethod = Literal["get", "put", "post", "delete", "options", "head", "patch", "trace"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OperationSelector(_Strict):
    """Operations by tag, path glob (`/pets/*`) or method; an operation matches when it
    matches every field given (a field matches when any of its values does)."""

    tags: list[str] = Field(default_factory=list[str])
    paths: list[str] = Field(default_factory=list[str])
    methods: list[HttpMethod] = Field(default_factory=list[HttpMethod])


class OperationSelection(_Strict):
    """Which operations become tools: those `include` selects (all when unset), less those
    `exclude` selects."""

    include: OperationSelector | None = None
    exclude: OperationSelector | None = None


class ApiCredential(_Strict):
    """The secret of one security scheme: `value` (an API key or a bearer token),
    `username`/`password` (HTTP basic), `client_id`/`client_secret` (OAuth2 client
    credentials). Secrets are references (`env:VAR`, `file:/path`), never values."""

    value: str | None = None
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    client_secret: str | None = None

    @model_validator(mode="after")
    def _references(self) -> Self:
        for name in _SECRET_FIELDS:
            value = getattr(self, name)
            if value is not None and not is_reference(value):
                raise ValueError(
                    f"{name} is a secret: give a reference (env:VAR or file:/path), never the value"
                )
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("give value, username/password or client_id/client_secret")
        return self


class RateLimit(_Strict):
    """Calls per window and calls at once (each replica enforces its share)."""

    requests: int | None = Field(default=None, gt=0)
    window: float = Field(default=60.0, gt=0, le=86_400)
    max_concurrent: int | None = Field(default=None, gt=0)

    def limits(self) -> QuotaLimits:
        """As quota limits."""
        return QuotaLimits(
            requests=self.requests, max_concurrent=self.max_concurrent, window=self.window
        )
