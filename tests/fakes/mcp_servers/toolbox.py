"""The toolbox: an MCP server (SDK `MCPServer`) whose tools exercise every client path.

Run it as a subprocess:

    python tests/fakes/mcp_servers/toolbox.py              # stdio
    python tests/fakes/mcp_servers/toolbox.py --http PORT  # streamable HTTP, 127.0.0.1:PORT/mcp
    python tests/fakes/mcp_servers/toolbox.py --sse PORT   # legacy SSE, 127.0.0.1:PORT/sse

stdout carries the protocol only (stdio) or nothing (HTTP); logs go to stderr.

Environment:
- `TOOLBOX_START_LOG`: a file that gets one line `start <pid>` at every start.
- `TOOLBOX_CANCEL_LOG`: a file that gets one line `cancelled slow <pid>` when a `slow`
  call is cancelled by the client (`notifications/cancelled`).
- `TOOLBOX_CALL_LOG`: a file that gets one line `destroy <target>` per execution of `destroy`.

Tools: add, echo, slow, crash, fail, huge, count, pid, toggle (adds/removes `extra`),
mutate (rewrites `echo`'s description), bad_structured (breaks its own output schema),
destroy. Resource `toolbox://greeting`; prompt `greet`.

The file imports nothing from the repository: it runs with the script's folder as
`sys.path[0]`, also inside a sandbox that binds only the venv and this folder.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, TypedDict

import anyio
from mcp.server import MCPServer, NotificationOptions
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
from mcp_types import CallToolResult, TextContent, ToolAnnotations

ECHO_DESCRIPTION = os.environ.get("TOOLBOX_ECHO_DESCRIPTION", "Echo the text back as a text block.")
BAD_STRUCTURED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"value": {"type": "integer"}},
    "required": ["value"],
    "additionalProperties": False,
}
"""What `bad_structured` declares; its result (`{"value": "not a number"}`) breaks it."""

READ_ONLY = ToolAnnotations(read_only_hint=True)


def bad_structured() -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text='{"value": "not a number"}')],
        structured_content={"value": "not a number"},
    )


def _bad_structured_tool() -> Tool:
    # A hand-built FuncMetadata publishes a schema without an output model, which
    # MCPServer advertises but does not check: the only way to send a result that
    # breaks its declared schema through the high-level API.
    tool = Tool.from_function(
        bad_structured, description="Structured content that breaks its schema."
    )
    metadata = FuncMetadata(
        arg_model=tool.fn_metadata.arg_model, output_schema=BAD_STRUCTURED_SCHEMA
    )
    return tool.model_copy(update={"fn_metadata": metadata})


class Pid(TypedDict):
    pid: int


app = MCPServer("toolbox", version="1.0.0", log_level="WARNING", tools=[_bad_structured_tool()])
_calls = 0


def _append_line(env_var: str, line: str) -> None:
    path = os.environ.get(env_var)
    if path:
        with Path(path).open("a", encoding="utf-8") as log:
            log.write(line + "\n")


async def _tools_changed(ctx: Context) -> None:
    # Handshake-era clients get the bare notification; 2026-07-28 clients only get it on
    # a `subscriptions/listen` stream (the SDK drops the bare one on such connections).
    await ctx.session.send_tool_list_changed()
    await ctx.notify_tools_changed()


@app.tool(annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True))
def add(a: int, b: int) -> int:
    """Add two integers; the sum is structured content `{"result": a + b}`."""
    return a + b


def echo(text: str) -> str:
    return text


app.add_tool(echo, description=ECHO_DESCRIPTION, annotations=READ_ONLY, structured_output=False)


@app.tool(annotations=READ_ONLY, structured_output=False)
async def slow(seconds: float, ctx: Context, steps: int = 4) -> str:
    """Report progress `steps` times evenly across `seconds`, then answer "done"."""
    try:
        for step in range(1, steps + 1):
            await anyio.sleep(seconds / steps)
            await ctx.report_progress(step, steps, f"step {step} of {steps}")
    except anyio.get_cancelled_exc_class():
        _append_line("TOOLBOX_CANCEL_LOG", f"cancelled slow {os.getpid()}")
        raise
    return "done"


@app.tool(structured_output=False)
def crash() -> str:
    """Exit the server process at once, in the middle of the call."""
    os._exit(3)


@app.tool(structured_output=False)
def fail(message: str) -> str:
    """Fail with `message` (an `isError: true` result)."""
    raise ToolError(message)


@app.tool(annotations=READ_ONLY, structured_output=False)
def huge(size: int) -> str:
    """A text block of `size` bytes."""
    return "x" * size


@app.tool(structured_output=False)
def count() -> str:
    """Count the calls this process has served (state never shared between processes)."""
    global _calls
    _calls += 1
    return str(_calls)


@app.tool(annotations=READ_ONLY)
def pid() -> Pid:
    """This server's process id, as structured content `{"pid": …}`."""
    return {"pid": os.getpid()}


def extra() -> str:
    return "extra"


@app.tool(structured_output=False)
async def toggle(ctx: Context) -> str:
    """Add the tool `extra` when absent, remove it when present; notify the list change."""
    present = any(tool.name == "extra" for tool in await app.list_tools())
    if present:
        app.remove_tool("extra")
    else:
        app.add_tool(extra, description="Exists between two toggles.", structured_output=False)
    await _tools_changed(ctx)
    return "removed extra" if present else "added extra"


@app.tool(structured_output=False)
async def mutate(description: str, ctx: Context) -> str:
    """Rewrite the description of `echo` (a "rug pull") and notify the list change."""
    app.remove_tool("echo")
    app.add_tool(echo, description=description, annotations=READ_ONLY, structured_output=False)
    await _tools_changed(ctx)
    return "mutated echo"


@app.tool(
    annotations=ToolAnnotations(destructive_hint=True, read_only_hint=False),
    structured_output=False,
)
def destroy(target: str) -> str:
    """Pretend to destroy `target` (each execution is a line in `TOOLBOX_CALL_LOG`, if set)."""
    _append_line("TOOLBOX_CALL_LOG", f"destroy {target}")
    return f"destroyed {target}"


@app.resource("toolbox://greeting", mime_type="text/plain")
def greeting() -> str:
    """A fixed greeting."""
    return "hello"


@app.prompt()
def greet(name: str) -> str:
    """Ask to greet someone by name."""
    return f"Please greet {name}."


def _advertise_list_changed() -> None:
    # MCPServer advertises `tools.listChanged: false` with no option to change it;
    # handshake-era clients should see `true`, since `toggle` and `mutate` notify.
    lowlevel = app._lowlevel_server  # pyright: ignore[reportPrivateUsage]
    build = lowlevel.create_initialization_options

    def with_list_changed(notification_options: NotificationOptions | None = None, **kwargs: Any):
        options = notification_options or NotificationOptions(tools_changed=True)
        return build(options, **kwargs)

    lowlevel.create_initialization_options = with_list_changed  # type: ignore[method-assign]


def _serve_http(transport: str, port: int) -> None:
    import uvicorn

    if transport == "http":
        asgi = app.streamable_http_app(host="127.0.0.1")
    else:
        asgi = app.sse_app(host="127.0.0.1")
    config = uvicorn.Config(
        asgi, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"
    )
    anyio.run(uvicorn.Server(config).serve)


def main() -> None:
    parser = argparse.ArgumentParser(description="The toolbox MCP server (stdio by default).")
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--http", type=int, metavar="PORT", help="streamable HTTP on PORT")
    transport.add_argument("--sse", type=int, metavar="PORT", help="legacy SSE on PORT")
    args = parser.parse_args()
    _append_line("TOOLBOX_START_LOG", f"start {os.getpid()}")
    _advertise_list_changed()
    if args.http is not None:
        _serve_http("http", args.http)
    elif args.sse is not None:
        _serve_http("sse", args.sse)
    else:
        app.run("stdio")


if __name__ == "__main__":
    main()
