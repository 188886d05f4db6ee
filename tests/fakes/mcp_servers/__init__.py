"""MCP servers the tests spawn as real subprocesses (stdio, streamable HTTP, SSE).

`toolbox.py` is one `MCPServer` with a tool for every behaviour the MCP worker must
handle: structured and text results, progress, cancellation, a crash mid-call, tool
errors, huge results, per-process state, list changes, a changed definition and a
result that breaks its own output schema. Helpers to start it are in `tests/mcp_servers.py`.
"""
