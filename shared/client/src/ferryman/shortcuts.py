"""Conveniences for the command line and scripts: a one-prompt chat request, compact JSON."""

from __future__ import annotations

import json

from pydantic import BaseModel

from ferryman.contracts import ChatRequest


def request_from_prompt(prompt: str, *, model: str, stream: bool = True) -> ChatRequest:
    """Build a one-message chat request (used by the CLI and the demo)."""
    return ChatRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream}
    )


def dumps_event(event: BaseModel) -> str:
    """Render an event as compact JSON."""
    return json.dumps(event.model_dump(mode="json", exclude_none=True), separators=(",", ":"))
