"""The response cache's key: tenant, namespace and serving target in the path, and a digest
of everything in the request that can change the answer (docs/caching.md, "Key")."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any, Final

from ferryman.contracts import ChatRequest
from llm_worker.providers.config import AnthropicConfig, GeminiConfig
from llm_worker.providers.gemini_request import SAFETY_METADATA_KEY

KEY_PREFIX: Final = "ferryman:rc:v1:"
"""What every stored answer's key starts with (its version changes with the digest's shape)."""

NO_NAMESPACE: Final = "-"
"""The namespace segment when neither the request nor the route names one."""

_ESCAPED: Final = {c: f"%{ord(c):02X}" for c in "%/*?[]\\"}
"""Percent-encoded in every segment: the separator, `%` itself, and Redis glob characters."""

TargetDefaults = Callable[[str, str], Mapping[str, Any]]
"""`(provider, model)` → the worker's settings that shape that target's answers."""


def escape_segment(value: str) -> str:
    """`value` with `/`, `%` and glob characters percent-encoded (a segment of a key)."""
    return "".join(_ESCAPED.get(c, c) for c in value)


def key_space(tenant: str) -> str:
    """The part of every key of `tenant`'s answers after `KEY_PREFIX`."""
    return escape_segment(tenant) + "/"


def prefix_key(tenant: str | None, relative: str) -> str:
    """The key prefix (after `KEY_PREFIX`) of an invalidation: `relative` is
    `"<namespace>/"`, `"<namespace>/<provider>/<model>/"` or a beginning of either, in
    `tenant`'s key space (None: every tenant's, `relative` must then be empty).

    A model name may hold `/`: everything after the provider is the model, and a final `/`
    ends it.
    """
    if tenant is None:
        return ""
    pieces = relative.split("/", 2)
    encoded = [escape_segment(piece) for piece in pieces[:2]]
    if len(pieces) == 3:
        model = pieces[2]
        encoded.append(
            escape_segment(model.removesuffix("/")) + ("/" if model.endswith("/") else "")
        )
    return key_space(tenant) + "/".join(encoded)


def response_key(
    request: ChatRequest,
    *,
    tenant: str,
    namespace: str | None,
    provider: str,
    model: str,
    endpoint: str | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> str:
    """The key of `request`'s answer from `provider/model`, for `tenant`.

    Args:
        request: the request as the provider would get it (datarefs resolved).
        tenant: the request's tenant (requests without one are never cached).
        namespace: the request's namespace, else the route's (None: `-`).
        provider: the serving deployment's provider.
        model: the serving deployment's model.
        endpoint: the serving deployment's own base URL, if it has one (two servers with
            the same provider and model name may be different models).
        defaults: the worker's settings that shape this target's answers (see
            `worker_defaults`).
    """
    path = "/".join(
        escape_segment(segment) for segment in (tenant, namespace or NO_NAMESPACE, provider, model)
    )
    material = [
        "v1",
        tenant,
        f"{provider}/{model}",
        [_message(m) for m in request.messages],
        [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in request.tools or ()],
        _dump(request.tool_choice),
        request.temperature,
        request.top_p,
        request.max_tokens,
        [request.stop] if isinstance(request.stop, str) else request.stop,
        _dump(request.response_format),
        request.seed,
        (request.metadata or {}).get(SAFETY_METADATA_KEY),
        dict(defaults or {}),
    ]
    if endpoint is not None:  # appended, so keys of deployments without one do not change
        material.append({"endpoint": endpoint.rstrip("/")})
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{KEY_PREFIX}{path}/{digest}"


def worker_defaults(anthropic: AnthropicConfig, gemini: GeminiConfig) -> TargetDefaults:
    """The worker-wide settings that change a target's answers, for `response_key`:
    Anthropic's default `max_tokens` and thinking budget, Gemini's safety settings."""

    def of(provider: str, model: str) -> Mapping[str, Any]:
        if provider == "anthropic":
            limit = anthropic.max_tokens_by_model.get(model, anthropic.default_max_tokens)
            return {"max_tokens": limit, "thinking": anthropic.thinking_budget_tokens}
        if provider == "gemini":
            return {"safety": dict(gemini.safety_settings)}
        return {}

    return of


def _message(message: Any) -> Any:
    """A message as keyed: string content as one text part, cache markers left out."""
    dumped: dict[str, Any] = message.model_dump(mode="json", by_alias=True, exclude_none=True)
    dumped.pop("cache_control", None)
    content = dumped.get("content")
    if isinstance(content, str):
        dumped["content"] = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                part.pop("cache_control", None)
    return dumped


def _dump(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    return value.model_dump(mode="json", by_alias=True, exclude_none=True)
