"""An MCP server (SDK `MCPServer`, stdio) with one tool, `meta`, that answers with the
`_meta` of the request it received, as JSON text: what a client passed to the server.

Run it as a subprocess: `python tests/fakes/mcp_servers/meta_echo.py`. It imports nothing
from the repository.
"""

from __future__ import annotations

import json

from mcp.server import MCPServer
from mcp.server.mcpserver import Context

app = MCPServer("meta-echo", version="1.0.0", log_level="WARNING")


@app.tool(structured_output=False)
def meta(ctx: Context) -> str:
    """The request's `_meta`, as JSON."""
    received = ctx.request_context.meta or {}
    return json.dumps(dict(received), default=str)


if __name__ == "__main__":
    app.run("stdio")
