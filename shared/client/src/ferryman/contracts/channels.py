"""How a domain (LLM, MCP, storage) declares its channels for the AsyncAPI document.

Each domain adds one `RequestDomain` to `ferryman.contracts.registry.DOMAINS`; the
document, its channels and operations are generated from that list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel


@dataclass(frozen=True)
class EventMessage:
    """One event type a channel carries.

    Args:
        name: the message's component name (`chatChunk`).
        event_type: its `ce_type` (`ferryman.llm.chat.chunk`).
        payload: the model of its `data`.
    """

    name: str
    event_type: str
    payload: type[BaseModel]


@dataclass(frozen=True)
class ExtraChannel:
    """A topic of a domain besides its requests, replies and dead letters (control,
    catalog, audit).

    Args:
        name: the channel's id in the document (`mcpControl`).
        address: the default topic.
        description: what flows there.
        messages: the events it carries.
        action: `receive` when the workers consume it, `send` when they publish it.
    """

    name: str
    address: str
    description: str
    messages: tuple[EventMessage, ...]
    action: Literal["receive", "send"]


@dataclass(frozen=True)
class RequestDomain:
    """A worker's request topic, its reply events and its dead letters.

    Args:
        name: channel prefix (`llm` → `llmRequests`, `llmResults`, `llmDeadLetters`).
        title: what the domain does, for the document.
        request_topic: the default request topic.
        reply_topic: the default reply topic (a request's `replyto` may name another).
        requests: the request events.
        replies: the reply events, non-terminal first.
        extra: the domain's other channels.
    """

    name: str
    title: str
    request_topic: str
    reply_topic: str
    requests: tuple[EventMessage, ...]
    replies: tuple[EventMessage, ...]
    extra: tuple[ExtraChannel, ...] = ()
