"""Every domain's channels; the AsyncAPI document is built from this list.

A new worker's domain module declares a `RequestDomain` and is added here.
"""

from __future__ import annotations

from ferryman.contracts import llm
from ferryman.contracts.channels import EventMessage, RequestDomain

LLM = RequestDomain(
    name="llm",
    title="Chat completions on LLM providers",
    request_topic=llm.DEFAULT_LLM_REQUEST_TOPIC,
    reply_topic=llm.DEFAULT_LLM_REPLY_TOPIC,
    requests=(EventMessage("chatRequested", llm.LLM_CHAT_REQUESTED, llm.ChatRequest),),
    replies=(
        EventMessage("chatChunk", llm.LLM_CHAT_CHUNK, llm.ChatChunk),
        EventMessage("chatRestarted", llm.LLM_CHAT_RESTARTED, llm.ChatRestarted),
        EventMessage("chatCompleted", llm.LLM_CHAT_COMPLETED, llm.ChatCompleted),
        EventMessage("chatFailed", llm.LLM_CHAT_FAILED, llm.ChatFailed),
    ),
)

DOMAINS: tuple[RequestDomain, ...] = (LLM,)
"""The domains whose workers exist; `mcp` and `storage` join when their workers do."""
