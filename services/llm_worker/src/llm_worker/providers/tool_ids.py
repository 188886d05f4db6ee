"""Tool-call ids as producers see them, and the provider-neutral part of them.

Gemini needs its thought signature back on the next turn, and the chat-completions
shape has nowhere else to carry it, so the Gemini adapter appends it to the tool-call
id after `SIGNATURE_SEPARATOR`. Other providers limit id length and characters, so
they send only the part before it; a conversation can move between providers.
"""

from __future__ import annotations

from typing import Final

SIGNATURE_SEPARATOR: Final = "~ts~"


def neutral_tool_call_id(tool_call_id: str) -> str:
    """Return `tool_call_id` without a Gemini thought-signature suffix."""
    return tool_call_id.partition(SIGNATURE_SEPARATOR)[0]
