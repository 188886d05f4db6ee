"""Anthropic's wire form of prompt-cache breakpoints (`cache_control` on blocks).

Anthropic caches the prompt up to a block that carries `cache_control`, in the order
tools, system, messages. Ferryman's markers sit on messages and text parts; these helpers
put them on the block that ends the marked content.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ferryman.contracts.llm import SystemMessage, TextPart
from ferryman.contracts.llm_cache import CacheControl, Retention


class WireMarkers:
    """Turns Ferryman markers into Anthropic `cache_control` dicts under one retention."""

    def __init__(self, retention: Retention | None) -> None:
        self._retention: Retention | None = retention

    def __call__(self, marker: CacheControl | None) -> dict[str, Any] | None:
        """`{"type": "ephemeral"}` for 5 minutes, with `"ttl": "1h"` for an hour; None for none."""
        if marker is None:
            return None
        if marker.effective_ttl(self._retention) == "1h":
            return {"type": "ephemeral", "ttl": "1h"}
        return {"type": "ephemeral"}


def put_marker(blocks: list[dict[str, Any]], marker: dict[str, Any] | None) -> None:
    """Mark the last of `blocks` (a block marked already keeps its own: it is the earlier,
    never shorter-lived, marker of the same prefix)."""
    if marker is not None and blocks:
        blocks[-1].setdefault("cache_control", marker)


def text_block(part: TextPart, wire: WireMarkers) -> dict[str, Any]:
    """A text part as a text block, with its own marker."""
    block: dict[str, Any] = {"type": "text", "text": part.text}
    if (marker := wire(part.cache_control)) is not None:
        block["cache_control"] = marker
    return block


def _marked(message: SystemMessage) -> bool:
    if message.cache_control is not None:
        return True
    content = message.content
    return not isinstance(content, str) and any(p.cache_control is not None for p in content)


def system_param(
    messages: Sequence[SystemMessage], wire: WireMarkers
) -> str | list[dict[str, Any]]:
    """The `system` parameter: the joined text (as always) when no system message or part is
    marked, else one text block per message or part, the markers on the blocks they end.

    Empty texts are left out (Anthropic refuses empty text blocks); a marker on one moves
    to the block before it, which ends the same prefix.
    """
    if not any(_marked(m) for m in messages):
        texts = [
            m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)
            for m in messages
        ]
        return "\n\n".join(text for text in texts if text)
    blocks: list[dict[str, Any]] = []
    for message in messages:
        parts = (
            [TextPart(type="text", text=message.content)]
            if isinstance(message.content, str)
            else message.content
        )
        for part in parts:
            if part.text:
                blocks.append(text_block(part, wire))
            else:
                put_marker(blocks, wire(part.cache_control))
        put_marker(blocks, wire(message.cache_control))
    return blocks
