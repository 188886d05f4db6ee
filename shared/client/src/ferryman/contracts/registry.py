"""Every domain's channels; the AsyncAPI document is built from this list.

A new worker's domain module declares a `RequestDomain` and is added here.
"""

from __future__ import annotations

from ferryman.contracts import events as ev
from ferryman.contracts.channels import EventMessage, RequestDomain
from ferryman.contracts.llm import ChatChunk, ChatCompleted, ChatFailed, ChatRequest, ChatRestarted

LLM = RequestDomain(
    name="llm",
    title="Chat completions on LLM providers",
    request_topic=ev.DEFAULT_LLM_REQUEST_TOPIC,
    reply_topic=ev.DEFAULT_LLM_REPLY_TOPIC,
    requests=(EventMessage("chatRequested", ev.LLM_CHAT_REQUESTED, ChatRequest),),
    replies=(
        EventMessage("chatChunk", ev.LLM_CHAT_CHUNK, ChatChunk),
        EventMessage("chatRestarted", ev.LLM_CHAT_RESTARTED, ChatRestarted),
        EventMessage("chatCompleted", ev.LLM_CHAT_COMPLETED, ChatCompleted),
        EventMessage("chatFailed", ev.LLM_CHAT_FAILED, ChatFailed),
    ),
)

DOMAINS: tuple[RequestDomain, ...] = (LLM,)
"""The domains whose workers exist; `mcp` and `storage` join when their workers do."""
