"""Prompt-cache breakpoints: where auto mode places them, and rewriting the ones a request has.

Pure functions of a `ChatRequest`. `place_breakpoints` is auto mode (docs/caching.md §3):
tools and system first (the stable prefix every turn shares), and for Anthropic also the
last turn of a conversation, so each agent turn writes what the next one reads.
`map_markers` rewrites or drops every marker, visiting them in the order providers process
the prompt (tools, system messages, the other messages; a message's parts before itself).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, Final

from ferryman.contracts import ChatRequest
from ferryman.contracts.llm import (
    AssistantMessage,
    SystemMessage,
    TextPart,
    ToolMessage,
    UserMessage,
)
from ferryman.contracts.llm_cache import CacheControl, PromptCache, Retention

Message = SystemMessage | UserMessage | AssistantMessage | ToolMessage

UNKNOWN_MIN_TOKENS: Final = 4096
"""The minimum assumed for a model the table does not know (errs towards not marking)."""

DEFAULT_MIN_TOKENS: Final[dict[str, dict[str, int]]] = {
    # The smallest prefix each provider caches, per model pattern, as the providers' prompt-
    # caching pages gave it when written; not re-checked online (no internet here), so a
    # deployment's `min_tokens` overrides it (docs/caching.md §3).
    "anthropic": {
        "claude-opus-4-5*": 4096,
        "claude-haiku-4-5*": 4096,
        "claude-3-5-haiku*": 2048,
        "claude-3-haiku*": 2048,
        "claude-*": 1024,
    },
    "openai": {"*": 1024},
    "azure": {"*": 1024},
    # Gemini refuses a smaller cached content with 400 "Cached content is too small", which
    # states the enforced minimum; where its docs and its answers disagreed, the answer won.
    "gemini": {
        "gemini-2.5-flash-lite*": 2048,
        "gemini-2.5-flash*": 1024,
        "gemini-2.5-pro*": 2048,
        "gemini-3*": 4096,
    },
}
"""Provider → fnmatch pattern → minimum tokens; the longest matching pattern wins."""

_CHARS_PER_TOKEN: Final = 4


def min_tokens_for(provider: str, model: str, override: int | None = None) -> int:
    """The smallest prefix worth marking at `provider`/`model` (`override`: a deployment's
    `prompt_cache.min_tokens`)."""
    if override is not None:
        return override
    patterns = DEFAULT_MIN_TOKENS.get(provider, {})
    for pattern in sorted(patterns, key=len, reverse=True):
        if fnmatch.fnmatchcase(model, pattern):
            return patterns[pattern]
    return UNKNOWN_MIN_TOKENS


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, Unicode kept: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def estimate_tokens(value: Any) -> int:
    """A rough token count of `value`'s canonical JSON (characters / 4; errs high for prose)."""
    return len(canonical_json(value)) // _CHARS_PER_TOKEN


def _dumped(items: Sequence[Any]) -> list[Any]:
    return [item.model_dump(mode="json", exclude_none=True) for item in items]


def stable_prefix(request: ChatRequest) -> list[Any]:
    """The tools and system messages, dumped without their markers: what every turn shares."""
    system = [_unmarked(m) for m in request.messages if isinstance(m, SystemMessage)]
    return [_dumped(request.function_tools()), _dumped(system)]


def stable_digest(request: ChatRequest) -> str | None:
    """The sha256 of the stable prefix, None when the request has no tools and no system."""
    tools, system = stable_prefix(request)
    if not tools and not system:
        return None
    return hashlib.sha256(canonical_json([tools, system]).encode()).hexdigest()


def place_breakpoints(
    request: ChatRequest, provider: str, model: str, min_tokens: int
) -> ChatRequest:
    """Return `request` with auto mode's breakpoints (unchanged when none apply).

    - The stable prefix (tools + system) reaching `min_tokens`: a breakpoint after the
      tools (if any) and on the last system message (if any). Anthropic and Gemini only.
    - Anthropic, when the whole prompt reaches `min_tokens` and it holds 3 or more turns
      besides the system: also the last turn (the incremental pattern of agents).
    - OpenAI and Azure cache by themselves (the caller sets the key), others have no
      cache: no markers.

    The caller decides whether auto mode applies (it never overrides explicit markers).
    """
    if provider not in ("anthropic", "gemini"):
        return request
    stable = stable_prefix(request)
    stable_tokens = estimate_tokens(stable)
    messages = list(request.messages)
    options = request.prompt_cache or PromptCache()
    changed = False
    if stable_tokens >= min_tokens:
        if request.function_tools():
            options = options.model_copy(update={"tools": CacheControl()})
            changed = True
        system_at = [i for i, m in enumerate(messages) if isinstance(m, SystemMessage)]
        if system_at:
            messages[system_at[-1]] = _marked(messages[system_at[-1]])
            changed = True
    if provider == "anthropic":
        turns = [i for i, m in enumerate(messages) if not isinstance(m, SystemMessage)]
        rest = _dumped([m for m in request.messages if not isinstance(m, SystemMessage)])
        if len(turns) >= 3 and stable_tokens + estimate_tokens(rest) >= min_tokens:
            messages[turns[-1]] = _marked(messages[turns[-1]])
            changed = True
    if not changed:
        return request
    return request.model_copy(update={"messages": messages, "prompt_cache": options})


def _marked(message: Message) -> Message:
    return message.model_copy(update={"cache_control": CacheControl()})


def _unmarked(message: Message) -> Message:
    return _map_message(message, lambda _: None)


MarkerMap = Callable[[CacheControl], CacheControl | None]
"""Rewrites one marker; None drops it."""


def map_markers(request: ChatRequest, rewrite: MarkerMap) -> ChatRequest:
    """Return `request` with every marker replaced by `rewrite(marker)` (None drops it).

    `rewrite` sees the markers in the order providers process the prompt: the tools', then
    the system messages', then the other messages' (a message's parts before its own).
    """
    if not request.cache_breakpoints():
        return request
    options = request.prompt_cache
    if options is not None and options.tools is not None:
        options = options.model_copy(update={"tools": rewrite(options.tools)})
    messages: list[Message] = list(request.messages)
    system = [i for i, m in enumerate(messages) if isinstance(m, SystemMessage)]
    others = [i for i, m in enumerate(messages) if not isinstance(m, SystemMessage)]
    for i in [*system, *others]:
        messages[i] = _map_message(messages[i], rewrite)
    return request.model_copy(update={"messages": messages, "prompt_cache": options})


def _map_message(message: Message, rewrite: MarkerMap) -> Message:
    update: dict[str, Any] = {}
    content = message.content
    if isinstance(content, list) and any(
        isinstance(p, TextPart) and p.cache_control is not None for p in content
    ):
        update["content"] = [
            p.model_copy(update={"cache_control": rewrite(p.cache_control)})
            if isinstance(p, TextPart) and p.cache_control is not None
            else p
            for p in content
        ]
    if message.cache_control is not None:
        update["cache_control"] = rewrite(message.cache_control)
    return message.model_copy(update=update) if update else message


def resolve_ttls(request: ChatRequest, retention: Retention | None) -> ChatRequest:
    """Give every marker an explicit ttl under `retention`, never a `1h` after a `5m`.

    A marker without ttl takes the retention's (`long`: 1h, else 5m). A `1h` that would
    follow a `5m` in processing order becomes `5m`: Anthropic refuses the other order, and a
    route's retention can make it so for a request that was valid as sent.
    """
    seen_short = False

    def rewrite(marker: CacheControl) -> CacheControl:
        nonlocal seen_short
        ttl = marker.effective_ttl(retention)
        if seen_short:
            ttl = "5m"
        seen_short = seen_short or ttl == "5m"
        return marker if marker.ttl == ttl else marker.model_copy(update={"ttl": ttl})

    return map_markers(request, rewrite)


def strip_markers(request: ChatRequest) -> ChatRequest:
    """Return `request` without any marker, key or retention (for deployments that reject
    the fields)."""
    stripped = map_markers(request, lambda _: None)
    if stripped.prompt_cache is None:
        return stripped
    return stripped.model_copy(update={"prompt_cache": None})
