"""A request's prompt-cache options, shaped for one deployment before it is called.

`DeploymentCaller` runs `prepare_request` for every candidate, failover included, so each
deployment gets the request as it should see it: markers stripped where the deployment
cannot take them, auto mode's breakpoints for its provider and model, ttls resolved under
the route's retention, and the cache key namespaced by tenant. The provider mappers then
drop whatever their provider has no wire form for (docs/caching.md §4).
"""

from __future__ import annotations

import hashlib
import json

from ferryman.contracts import ChatRequest
from ferryman.contracts.llm_cache import PromptCache
from llm_worker.caching.breakpoints import (
    min_tokens_for,
    place_breakpoints,
    resolve_ttls,
    stable_digest,
    strip_markers,
)
from llm_worker.routing.config import Deployment, RoutePromptCache


def namespaced_key(tenant: str | None, key: str) -> str:
    """The key sent to the provider: a digest of the tenant and the key, so a tenant's name
    never leaves the worker and two tenants never share a cache bucket. The digest is of the
    JSON list `[tenant, key]`: no tenant (`null`), `""` and `"-"` differ, and no character
    in either can make two pairs collide."""
    digest = hashlib.sha256(json.dumps([tenant, key]).encode()).hexdigest()
    return f"fm-{digest[:32]}"


def auto_applies(request: ChatRequest, route: RoutePromptCache) -> bool:
    """Whether auto mode places breakpoints on `request`: the request asks for it, or the
    route does and the request does not refuse; and it carries no breakpoint of its own."""
    asked = request.prompt_cache.auto if request.prompt_cache is not None else None
    wanted = asked if asked is not None else route.auto
    return wanted and not request.cache_breakpoints()


def prepare_request(
    request: ChatRequest,
    *,
    tenant: str | None,
    deployment: Deployment,
    route: RoutePromptCache,
) -> ChatRequest:
    """Return `request` as `deployment` should be sent it (pure; `request` is not changed).

    1. `deployment.prompt_cache.send` false: no marker, key or retention at all.
    2. Auto mode (`auto_applies`): breakpoints for the deployment's provider and model,
       when the prompt reaches its minimum; the key defaults to the stable prefix's digest.
    3. The retention is the request's, else the route's; every marker gets its ttl.
    4. The key, when there is one, is namespaced by tenant (`namespaced_key`).
    """
    if not deployment.prompt_cache.send:
        return strip_markers(request)
    options = request.prompt_cache or PromptCache()
    retention = options.retention or route.retention
    prepared = request
    key = options.key
    if auto_applies(request, route):
        minimum = min_tokens_for(
            deployment.provider, deployment.model, deployment.prompt_cache.min_tokens
        )
        prepared = place_breakpoints(request, deployment.provider, deployment.model, minimum)
        key = key or stable_digest(request)
    prepared = resolve_ttls(prepared, retention)
    if key is None and retention is None and prepared.prompt_cache is None:
        return prepared
    final = (prepared.prompt_cache or PromptCache()).model_copy(
        update={
            "key": namespaced_key(tenant, key) if key is not None else None,
            "retention": retention,
        }
    )
    return prepared.model_copy(update={"prompt_cache": final})
