"""Caching options of LLM requests, and the control event that invalidates the response cache.

Two caches, two sets of options (docs/caching.md):
- **Provider prompt caching**: `CacheControl` breakpoints on messages and text parts, and
  `PromptCache` on the request (key, retention, a breakpoint after the tools, auto mode).
  They are hints: a provider with no wire form for them never sees them.
- **The worker's response cache**: `ResponseCacheOptions` on the request; exact-match
  answers per tenant, invalidated by `CacheInvalidation` events on the control topic.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

LLM_CACHE_INVALIDATE_REQUESTED: Final = "ferryman.llm.cache.invalidate.requested"
"""The CloudEvents `type` of a response-cache invalidation (on the control topic)."""

CacheTtl = Literal["5m", "1h"]
"""How long a provider keeps a cached prefix: five minutes or one hour."""

Retention = Literal["short", "long"]
"""`short`: Anthropic 5m, OpenAI `in_memory`, Gemini 300 s; `long`: 1h, `24h`, 3600 s."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CacheControl(_Strict):
    """A prompt-cache breakpoint: the prompt up to and including the block or message that
    carries it may be cached (the name and shape of Anthropic's and LiteLLM's marker)."""

    type: Literal["ephemeral"] = "ephemeral"
    ttl: CacheTtl | None = None
    """None: the request's `prompt_cache.retention`, else the provider's default (5m)."""

    def effective_ttl(self, retention: Retention | None) -> CacheTtl:
        """The ttl this breakpoint asks for, given the request's retention hint."""
        if self.ttl is not None:
            return self.ttl
        return "1h" if retention == "long" else "5m"


class PromptCache(_Strict):
    """`ChatRequest.prompt_cache`: provider prompt caching of this request."""

    key: str | None = Field(default=None, min_length=1, max_length=256)
    """A prompt-cache key (OpenAI and Azure `prompt_cache_key`); the worker namespaces it by
    tenant before sending it, so two tenants never share a cache bucket."""
    retention: Retention | None = None
    """How long cached prefixes should live, where the provider lets the caller choose."""
    tools: CacheControl | None = None
    """A breakpoint after the tool definitions."""
    auto: bool | None = None
    """None: the route decides; False: never place breakpoints automatically."""


class ResponseCacheOptions(_Strict):
    """`ChatRequest.response_cache`: the worker's exact-match response cache."""

    use: bool = True
    """True turns the cache on for this request; False bypasses a route's cache."""
    ttl: int | None = Field(default=None, ge=1)
    """Seconds a stored answer lives, capped by the route's and the worker's maximum."""
    refresh: bool = False
    """Skip the lookup and store the fresh answer."""
    namespace: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    """Part of the key (default: the route's); invalidation may target one namespace."""


class CacheInvalidation(_Strict):
    """The `data` of `ferryman.llm.cache.invalidate.requested`: drop stored responses.

    Exactly one of `tenant` and `all`. `prefix` is relative to the tenant's key space:
    `"<namespace>/"` or `"<namespace>/<provider>/<model>/"` (empty: all of the tenant's).
    Entries stored before the event's time are dropped; replaying the event is harmless.
    """

    tenant: str | None = Field(default=None, min_length=1, max_length=256)
    prefix: str = Field(default="", max_length=1024)
    all: bool = False
    """Every tenant's entries (then `tenant` and `prefix` are not allowed)."""
    reason: str | None = Field(default=None, max_length=256)
    """Why, for the logs (free text: keep secrets out)."""

    @model_validator(mode="after")
    def _one_scope(self) -> CacheInvalidation:
        if self.all == (self.tenant is not None):
            raise ValueError("give exactly one of tenant and all")
        if self.all and self.prefix:
            raise ValueError("prefix is relative to a tenant: not allowed with all")
        return self

    @property
    def scope(self) -> Literal["tenant", "all"]:
        """`all` or `tenant` (the metrics label)."""
        return "all" if self.all else "tenant"
