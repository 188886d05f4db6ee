"""Conveniences for the command line and scripts: a one-prompt chat request, compact JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from ferryman.contracts import ChatRequest


def request_from_prompt(
    prompt: str,
    *,
    model: str,
    stream: bool = True,
    tools: Sequence[BaseModel | Mapping[str, Any]] | None = None,
    tool_execution: BaseModel | Mapping[str, Any] | None = None,
) -> ChatRequest:
    """Build a one-message chat request (used by the CLI and the demo); `tools` may hold
    function tools and MCP toolsets (`{"type": "mcp", "server": "time"}`), and
    `tool_execution` (`{"mode": "auto", "max_steps": 4}`) lets the worker run the MCP tools.

    Raises:
        pydantic.ValidationError: the request is not valid.
    """
    data: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": stream,
    }
    if tools is not None:
        data["tools"] = list(tools)
    if tool_execution is not None:
        data["tool_execution"] = tool_execution
    return ChatRequest.model_validate(data)


def dumps_event(event: BaseModel) -> str:
    """Render an event as compact JSON."""
    return json.dumps(event.model_dump(mode="json", exclude_none=True), separators=(",", ":"))
