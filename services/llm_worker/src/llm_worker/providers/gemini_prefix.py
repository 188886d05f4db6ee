"""Which part of a Gemini request goes into a cached content, and under which digest (pure).

Gemini has no per-block cache markers: a prompt prefix is cached by creating a
`cachedContents` resource and naming it in later calls. Ferryman's breakpoints map onto it
like this: the **last** breakpoint sets the prefix, which is the system instruction, the
tools, the tool config and `contents[:k]`, where k is just past the turn holding the last
marked non-system message (0 when only the tools or system messages are marked). The call
then sends `contents[k:]` with `cached_content` and without system instruction, tools and
tool config (Gemini refuses a call that has both).

The digest (sha256 of canonical JSON) covers the model, the tenant, the request's
(namespaced) prompt-cache key and every cached field, so a cached content is never shared
across tenants and is reused exactly when the prefix is the same.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.genai import types

from ferryman.contracts import ChatRequest
from ferryman.contracts.llm import SystemMessage, TextPart
from ferryman.contracts.llm_cache import CacheTtl
from llm_worker.caching.breakpoints import DEFAULT_MIN_TOKENS, UNKNOWN_MIN_TOKENS
from llm_worker.providers.gemini_request import GeminiRequest

MIN_CACHE_TOKENS: Mapping[str, int] = DEFAULT_MIN_TOKENS["gemini"]
"""Smallest cached content per model pattern: the table auto placement uses too, so the two
never disagree. The longest matching pattern wins."""

DEFAULT_MIN_CACHE_TOKENS = UNKNOWN_MIN_TOKENS
"""The minimum for models no pattern matches."""

CHARS_PER_TOKEN = 4
"""Characters of canonical JSON per estimated token (errs high, which is harmless: a
too-small prefix is refused once and remembered)."""


def min_cache_tokens(model: str, overrides: Mapping[str, int] | None = None) -> int:
    """The smallest prefix worth creating for `model` (`overrides` before the table)."""
    name = model.removeprefix("models/")
    for table in (overrides or {}, MIN_CACHE_TOKENS):
        for pattern in sorted(table, key=len, reverse=True):
            if fnmatch.fnmatchcase(name, pattern):
                return table[pattern]
    return DEFAULT_MIN_CACHE_TOKENS


@dataclass(frozen=True)
class CachePrefix:
    """What one cached content holds, and how long it should live."""

    model: str
    contents: list[types.Content]
    system_instruction: types.Content | None
    tools: list[types.Tool] | None
    tool_config: types.ToolConfig | None
    retention: CacheTtl
    """`5m` (the worker's short ttl) or `1h` (its long ttl)."""
    digest: str
    estimated_tokens: int

    def create_config(
        self, ttl_seconds: int, http_options: types.HttpOptions | None
    ) -> types.CreateCachedContentConfig:
        """The `caches.create` config of this prefix."""
        return types.CreateCachedContentConfig(
            contents=list(self.contents) or None,
            system_instruction=self.system_instruction,
            tools=self.tools,
            tool_config=self.tool_config,
            ttl=f"{ttl_seconds}s",
            display_name=f"ferryman-{self.digest[:16]}",
            http_options=http_options,
        )


@dataclass(frozen=True)
class SplitRequest:
    """A request cut into a cacheable prefix and the rest sent with each call."""

    prefix: CachePrefix
    rest: list[types.Content]
    config: types.GenerateContentConfig
    """The call's config without system instruction, tools and tool config."""

    def cached_config(
        self, name: str, http_options: types.HttpOptions | None
    ) -> types.GenerateContentConfig:
        """The call's config naming cached content `name`."""
        return self.config.model_copy(update={"cached_content": name, "http_options": http_options})


def split_prefix(
    request: ChatRequest, translated: GeminiRequest, *, model: str, tenant: str | None
) -> SplitRequest | None:
    """Cut `translated` at the request's last breakpoint, or None when nothing is to be cached
    (no breakpoint, or nothing before it).

    The rest must keep at least one turn (a call needs contents), so a breakpoint on the
    last message caches everything before it.
    """
    breakpoints = request.cache_breakpoints()
    if not breakpoints:
        return None
    config = translated.config
    contents = translated.contents
    k = min(_last_marked_end(request, translated.message_ends), max(0, len(contents) - 1))
    # `translate_request` builds only these types; the config's fields accept more.
    system = config.system_instruction
    system = system if isinstance(system, types.Content) else None
    tools = [tool for tool in config.tools or () if isinstance(tool, types.Tool)] or None
    if k == 0 and system is None and not tools:
        return None
    retention = request.prompt_cache.retention if request.prompt_cache else None
    key = request.prompt_cache.key if request.prompt_cache else None
    cached = {
        "contents": [_dump(c) for c in contents[:k]],
        "system_instruction": _dump(system),
        "tools": [_dump(t) for t in tools or ()],
        "tool_config": _dump(config.tool_config),
    }
    text = _canonical(cached)
    digest = hashlib.sha256(
        _canonical(["gemini-cache-v1", model, tenant, key, cached]).encode()
    ).hexdigest()
    prefix = CachePrefix(
        model=model,
        contents=contents[:k],
        system_instruction=system,
        tools=tools,
        tool_config=config.tool_config,
        retention=breakpoints[-1].effective_ttl(retention),
        digest=digest,
        estimated_tokens=len(text) // CHARS_PER_TOKEN,
    )
    rest_config = config.model_copy(
        update={"system_instruction": None, "tools": None, "tool_config": None}
    )
    return SplitRequest(prefix, contents[k:], rest_config)


def _last_marked_end(request: ChatRequest, ends: list[int]) -> int:
    """How many contents hold the last marked non-system message (0: none is marked)."""
    end = 0
    for index, message in enumerate(request.messages):
        if isinstance(message, SystemMessage):
            continue
        parts = [] if isinstance(message.content, str | None) else message.content
        marked = message.cache_control is not None or any(
            isinstance(part, TextPart) and part.cache_control is not None for part in parts
        )
        if marked:
            end = ends[index]
    return end


def _dump(model: types.Content | types.Tool | types.ToolConfig | None) -> Any:
    return None if model is None else model.model_dump(mode="json", exclude_none=True)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
