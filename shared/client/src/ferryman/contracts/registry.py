"""Every domain's channels; the AsyncAPI document is built from this list.

A new worker's domain module declares a `RequestDomain` and is added here.
"""

from __future__ import annotations

from ferryman.contracts import llm, mcp
from ferryman.contracts.channels import EventMessage, ExtraChannel, RequestDomain

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

MCP = RequestDomain(
    name="mcp",
    title="Tool calls, resources and prompts on MCP servers",
    request_topic=mcp.DEFAULT_MCP_REQUEST_TOPIC,
    reply_topic=mcp.DEFAULT_MCP_REPLY_TOPIC,
    requests=(
        EventMessage("toolCallRequested", mcp.MCP_TOOL_CALL_REQUESTED, mcp.ToolCallRequest),
        EventMessage(
            "resourceReadRequested", mcp.MCP_RESOURCE_READ_REQUESTED, mcp.ResourceReadRequest
        ),
        EventMessage("promptGetRequested", mcp.MCP_PROMPT_GET_REQUESTED, mcp.PromptGetRequest),
        EventMessage(
            "catalogListRequested", mcp.MCP_CATALOG_LIST_REQUESTED, mcp.CatalogListRequest
        ),
    ),
    replies=(
        EventMessage("mcpProgress", mcp.MCP_PROGRESS, mcp.McpProgress),
        EventMessage("toolCallCompleted", mcp.MCP_TOOL_CALL_COMPLETED, mcp.ToolCallCompleted),
        EventMessage(
            "resourceReadCompleted", mcp.MCP_RESOURCE_READ_COMPLETED, mcp.ResourceReadCompleted
        ),
        EventMessage("promptGetCompleted", mcp.MCP_PROMPT_GET_COMPLETED, mcp.PromptGetCompleted),
        EventMessage(
            "catalogListCompleted", mcp.MCP_CATALOG_LIST_COMPLETED, mcp.CatalogListCompleted
        ),
        EventMessage("mcpFailed", mcp.MCP_FAILED, mcp.McpFailed),
    ),
    extra=(
        ExtraChannel(
            name="mcpControl",
            address=mcp.DEFAULT_MCP_CONTROL_TOPIC,
            description="Cancellations, keyed by request id; every replica reads them.",
            messages=(
                EventMessage("cancelRequested", mcp.MCP_CANCEL_REQUESTED, mcp.CancelRequest),
            ),
            action="receive",
        ),
    ),
)
"""The MCP contract; published in `DOMAINS` once the mcp_worker serves it (issue 9)."""

DOMAINS: tuple[RequestDomain, ...] = (LLM,)
"""The domains whose workers exist (and the AsyncAPI document describes)."""
