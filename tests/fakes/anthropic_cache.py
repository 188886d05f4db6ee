"""The Anthropic fake's prompt cache: checks `cache_control` like the API, and plays the cache.

Checks (a 400 `invalid_request_error` each, as Anthropic answers): a marker is exactly
`{"type": "ephemeral"}` with an optional `ttl` of `5m` or `1h`; at most 4 markers; no `1h`
after a `5m` (order: tools, system, messages); markers only on tools and content blocks
(never on a message itself), never on an empty text block; a `system` list holds non-empty
text blocks only.

Cache: the prompt is a list of items (each tool, each system block, each message block).
A marker on item p makes the prefix `items[:p+1]` cacheable. A request reads the longest
prefix written before, looked for at every block boundary up to its last marker (as
Anthropic looks back), and writes the prefixes of its markers past that. Tokens are words
of each item's JSON, so the counts are exact and predictable.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

MAX_MARKERS = 4


class CacheRequestError(Exception):
    """The request's cache markers are invalid (the message is Anthropic's kind of message)."""


@dataclass(frozen=True)
class CacheUsage:
    """What one request read and wrote, in the fake's tokens."""

    input_tokens: int
    """Uncached input (Anthropic's `input_tokens` excludes reads and writes)."""
    read: int
    write: int
    write_1h: int


def _check_marker(marker: Any, where: str) -> str:
    if not isinstance(marker, dict) or marker.get("type") != "ephemeral":
        raise CacheRequestError(f"{where}.cache_control.type: Input should be 'ephemeral'")
    extra = set(marker) - {"type", "ttl"}
    if extra:
        raise CacheRequestError(
            f"{where}.cache_control.{sorted(extra)[0]}: Extra inputs are not permitted"
        )
    ttl = marker.get("ttl", "5m")
    if ttl not in ("5m", "1h"):
        raise CacheRequestError(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")
    return ttl


def _items(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, item) for every cacheable item, in processing order."""
    items: list[tuple[str, dict[str, Any]]] = []
    for i, tool in enumerate(body.get("tools") or ()):
        items.append((f"tools.{i}", tool))
    system = body.get("system")
    if isinstance(system, list):
        for i, block in enumerate(system):
            if block.get("type") != "text" or not block.get("text"):
                raise CacheRequestError(f"system.{i}: text content blocks must be non-empty")
            items.append((f"system.{i}", block))
    elif system:
        items.append(("system", {"type": "text", "text": system}))
    for m, message in enumerate(body.get("messages") or ()):
        if "cache_control" in message:
            raise CacheRequestError(f"messages.{m}.cache_control: Extra inputs are not permitted")
        content = message.get("content")
        blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
        for b, block in enumerate(blocks):
            items.append((f"messages.{m}.content.{b}", {"role": message.get("role"), **block}))
    return items


def _markers(where: str, item: dict[str, Any]) -> list[str]:
    """The ttls of the markers on `item` (a tool result's inner blocks count as its own)."""
    found: list[str] = []
    if item.get("type") == "text" and "cache_control" in item and not item.get("text"):
        raise CacheRequestError(f"{where}: cache_control cannot be set for empty text blocks")
    inner = item.get("content")
    if item.get("type") == "tool_result" and isinstance(inner, list):
        for i, block in enumerate(inner):
            if "cache_control" in block:
                found.append(_check_marker(block["cache_control"], f"{where}.content.{i}"))
    if "cache_control" in item:
        found.append(_check_marker(item["cache_control"], where))
    return found


def _stripped(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stripped(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_stripped(v) for v in value]
    return value


def _tokens(item: dict[str, Any]) -> int:
    return max(len(json.dumps(_stripped(item), sort_keys=True).split()), 1)


class PromptCacheSim:
    """The prefixes written so far (shared by all the fake's requests, per model)."""

    def __init__(self) -> None:
        self.written: set[str] = set()

    def usage(self, body: dict[str, Any], *, write: bool = True) -> CacheUsage | None:
        """Check the request's markers and play the cache; None when it has no marker.

        `write` false: check only (a request the fake fails writes nothing).

        Raises:
            CacheRequestError: the markers are invalid.
        """
        items = _items(body)
        marks: list[tuple[int, str]] = []  # (item position, ttl)
        for position, (where, item) in enumerate(items):
            marks.extend((position, ttl) for ttl in _markers(where, item))
        if not marks:
            return None
        if len(marks) > MAX_MARKERS:
            raise CacheRequestError(
                f"A maximum of {MAX_MARKERS} blocks with cache_control may be provided."
                f" Found {len(marks)}."
            )
        ttls = [ttl for _, ttl in marks]
        if "5m" in ttls and "1h" in ttls[ttls.index("5m") :]:
            raise CacheRequestError(
                "a ttl='1h' cache_control block must not come after a ttl='5m' block"
            )
        digest = hashlib.sha256(str(body.get("model")).encode())
        prefixes: list[str] = []
        sums: list[int] = []
        for _, item in items:
            digest.update(json.dumps(_stripped(item), sort_keys=True).encode())
            prefixes.append(digest.copy().hexdigest())
            sums.append((sums[-1] if sums else 0) + _tokens(item))
        last = marks[-1][0]
        hits = [p for p in range(last + 1) if prefixes[p] in self.written]
        read = sums[hits[-1]] if hits else 0
        read_upto = hits[-1] if hits else -1
        written = sums[last] - read if last > read_upto else 0
        long = [p for p, ttl in marks if ttl == "1h"]
        written_1h = sums[long[-1]] - read if long and long[-1] > read_upto else 0
        if write:
            self.written.update(prefixes[p] for p, _ in marks)
        return CacheUsage(sums[-1] - read - written, read, written, written_1h)
