"""MCP tool calls (the `data` of Ferryman's MCP CloudEvents): the place the mcp_worker's
request and reply models go. Only the topics are fixed so far."""

from typing import Final

DEFAULT_MCP_REQUEST_TOPIC: Final = "mcp.requests"
DEFAULT_MCP_REPLY_TOPIC: Final = "mcp.results"
