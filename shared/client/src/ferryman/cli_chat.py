"""`ferryman chat`: send a prompt, print the answer as it streams, let the worker run MCP
tools, and cancel the request on Ctrl-C.

Standard output carries the model's text only (every step's, as it streams; `--json`: the
completed event), so it can be piped; everything else goes to standard error, one line
each: tool calls (`→ time__get_current_time {"timezone":"UTC"}`), tool results
(`← time/get_current_time (12 ms) …`), restarts, progress (`-v`), failures and a summary.

Exit codes: 0 answered, 1 the request failed, 2 usage errors and timeouts, 130 interrupted
(Ctrl-C publishes a cancel and waits up to `CANCEL_GRACE_SECONDS` for the request's end).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from aiokafka.errors import KafkaError  # pyright: ignore[reportMissingTypeStubs]
from pydantic import ValidationError

from ferryman.cli_tools import positive_float
from ferryman.client import ChatEvent, ChatFailedError, FerrymanClient, RunRestarted, TopicSpec
from ferryman.contracts import (
    DEFAULT_LLM_REPLY_TOPIC,
    DEFAULT_LLM_REQUEST_TOPIC,
    ChatChunk,
    ChatCompleted,
    ChatProgress,
    ChatRequest,
    ChatRestarted,
    ErrorInfo,
    McpToolset,
    ToolCallFinished,
    ToolCallStarted,
)
from ferryman.contracts.mcp import DEFAULT_MCP_CONTROL_TOPIC
from ferryman.kafka_config import KafkaConnection
from ferryman.request_stream import RequestStream
from ferryman.shortcuts import request_from_prompt

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
CANCEL_GRACE_SECONDS = 5.0
"""How long an interrupted chat waits for its request's end after publishing the cancel."""
CANCEL_REASON = "interrupted from the ferryman command line"
SHOWN_CHARS = 200
"""How much of a tool call's arguments or a tool result's content a line shows."""


def add_chat_arguments(chat: argparse.ArgumentParser) -> None:
    """Add the arguments of `ferryman chat` to its parser."""
    chat.add_argument("prompt")
    chat.add_argument("--model", default="mock/echo", help="alias or provider/model")
    chat.add_argument("--no-stream", action="store_true", help="ask for the completed result only")
    chat.add_argument("--request-topic", default=DEFAULT_LLM_REQUEST_TOPIC)
    chat.add_argument("--reply-topic", default=DEFAULT_LLM_REPLY_TOPIC)
    chat.add_argument("--reply-partition", type=int, help="read only this reply partition")
    chat.add_argument(
        "--create-reply-topic", action="store_true", help="create a missing reply topic (dev)"
    )
    chat.add_argument("--tenant", help="the tenant the request is accounted to")
    chat.add_argument(
        "--expires-in", type=positive_float, help="seconds after which it must not start"
    )
    chat.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the result")
    chat.add_argument("--json", action="store_true", help="print the completed event as JSON")
    chat.add_argument(
        "-v", "--verbose", action="store_true", help="also print the tool loop's progress"
    )
    tools = chat.add_argument_group("MCP tools (servers of the mcp_worker's catalog)")
    tools.add_argument(
        "--tools",
        action="append",
        type=tool_servers,
        metavar="SERVER[:PATTERN][,…]",
        help="offer these servers' tools to the model (PATTERN: fnmatch of tool names; "
        "default every tool); repeatable",
    )
    tools.add_argument("--auto", action="store_true", help="the worker runs the MCP tool calls")
    chat.add_argument(
        "--control-topic",
        default=DEFAULT_MCP_CONTROL_TOPIC,
        help="where Ctrl-C publishes the request's cancel",
    )
    tools.add_argument("--max-steps", type=int, help="with --auto: model turns at most (1-64)")
    tools.add_argument(
        "--tool-timeout", type=positive_float, help="with --auto: seconds one tool call may take"
    )


def tool_servers(text: str) -> list[tuple[str, str]]:
    """Parse one `--tools` value, `SERVER[:PATTERN][,SERVER[:PATTERN]…]`, into (server,
    pattern) pairs (pattern `*` when left out).

    Raises:
        argparse.ArgumentTypeError: an empty entry, server or pattern, or a malformed
            server name.
    """
    pairs: list[tuple[str, str]] = []
    for entry in text.split(","):
        server, colon, pattern = entry.partition(":")
        server, pattern = server.strip(), pattern.strip() if colon else "*"
        if not server or not pattern:
            raise argparse.ArgumentTypeError(f"{entry.strip()!r} is not SERVER or SERVER:PATTERN")
        try:
            McpToolset(type="mcp", server=server, tools=[pattern])
        except ValidationError:
            raise argparse.ArgumentTypeError(
                f"{server!r} is not a server name (letters, digits, '_', '.', '-')"
            ) from None
        pairs.append((server, pattern))
    return pairs


def toolsets(values: Sequence[Sequence[tuple[str, str]]] | None) -> list[dict[str, Any]]:
    """The `McpToolset` dicts of the `--tools` values: one per server, in the order first
    named, with its patterns (each once)."""
    patterns: dict[str, list[str]] = {}
    for value in values or ():
        for server, pattern in value:
            named = patterns.setdefault(server, [])
            if pattern not in named:
                named.append(pattern)
    return [{"type": "mcp", "server": server, "tools": names} for server, names in patterns.items()]


def chat_request(args: argparse.Namespace) -> ChatRequest:
    """The chat request the arguments of `ferryman chat` describe.

    Raises:
        ValueError: inconsistent tool options (`--auto` without `--tools`, `--max-steps` or
            `--tool-timeout` without `--auto`), or an invalid request
            (`pydantic.ValidationError`, e.g. `--max-steps` out of range).
    """
    offered = toolsets(args.tools)
    if args.auto and not offered:
        raise ValueError("--auto needs --tools SERVER")
    execution: dict[str, Any] | None = None
    if args.auto:
        execution = {"mode": "auto"}
        if args.max_steps is not None:
            execution["max_steps"] = args.max_steps
        if args.tool_timeout is not None:
            execution["tool_timeout"] = args.tool_timeout
    elif args.max_steps is not None or args.tool_timeout is not None:
        raise ValueError("--max-steps and --tool-timeout need --auto")
    return request_from_prompt(
        args.prompt,
        model=args.model,
        stream=not args.no_stream,
        tools=offered or None,
        tool_execution=execution,
    )


def _one_line(text: str, limit: int = SHOWN_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class ChatPrinter:
    """Prints the events of a chat as they come: text on `out`, the rest on `err` as lines.

    Args:
        out: where the answer text (or, with `json_output`, the completed event) goes.
        err: where tool calls, results, notices and the summary go.
        verbose: also print `ChatProgress` stages.
        json_output: print the completed event as JSON instead of the text.
        no_stream: the request asked for no chunks: print the completed content.
    """

    def __init__(
        self,
        out: TextIO,
        err: TextIO,
        *,
        verbose: bool = False,
        json_output: bool = False,
        no_stream: bool = False,
    ) -> None:
        self._out = out
        self._err = err
        self._verbose = verbose
        self._json = json_output
        self._no_stream = no_stream
        self._open_line = False

    def show(self, event: ChatEvent) -> None:
        """Print one event of the chat's stream."""
        if isinstance(event, ChatChunk):
            if event.delta.content and not self._json:
                self._text(event.delta.content)
        elif isinstance(event, ToolCallStarted):
            self.line(f"→ {event.name} {_one_line(event.arguments)}")
        elif isinstance(event, ToolCallFinished):
            self.line(tool_result_line(event))
        elif isinstance(event, ChatProgress):
            if self._verbose:
                detail = f": {_one_line(event.message)}" if event.message else ""
                self.line(f"· step {event.step} {event.stage}{detail}")
        elif isinstance(event, ChatRestarted):
            step = "" if event.step is None else f"step {event.step} "
            self.line(
                f"[restarted {step}on {event.deployment}: {event.reason.code}; "
                f"discarding {event.discarded_chunks} chunks]"
            )
        elif isinstance(event, RunRestarted):
            self.line(
                f"[the request runs again (run {event.run_id}); "
                f"discarding {event.discarded_chunks} chunks]"
            )
        else:
            self._completed(event)

    def failed(self, error: ErrorInfo) -> None:
        """Print the request's failure."""
        self.line(f"failed: {error.code}: {error.message}")

    def line(self, text: str) -> None:
        """Print a line on `err`, after ending the text line open on `out`, if any."""
        self._end_text()
        print(text, file=self._err, flush=True)

    def _text(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()
        self._open_line = not text.endswith("\n")

    def _end_text(self) -> None:
        if self._open_line:
            self._text("\n")

    def _completed(self, event: ChatCompleted) -> None:
        if self._json:
            print(event.model_dump_json(indent=2), file=self._out, flush=True)
        elif self._no_stream:
            self._text(event.content)
        self._end_text()
        self.line(summary_line(event))
        if not self._json:
            for call in event.tool_calls:
                print(f"tool call {call.id}: {call.name}({call.arguments})", file=self._out)


def tool_result_line(event: ToolCallFinished) -> str:
    """`← server/tool (12 ms[, cached][, replayed]) [error: [code: ]]content…`."""
    notes = "".join(
        f", {note}" for note, on in (("cached", event.cached), ("replayed", event.replayed)) if on
    )
    error = ""
    if event.is_error:
        error = "error: " if event.error is None else f"error: {event.error.code}: "
    content = event.content or (event.error.message if event.error is not None else "")
    return (
        f"← {event.server}/{event.tool} ({event.duration_ms:.0f} ms{notes}) "
        f"{error}{_one_line(content)}"
    ).rstrip()


def summary_line(event: ChatCompleted) -> str:
    """`[provider/model · finish · N steps, K tool calls · in / out tokens · ms]`."""
    parts = [f"{event.provider}/{event.model}", event.finish_reason]
    if event.steps:
        calls = sum(len(step.tool_results) for step in event.steps)
        parts.append(f"{len(event.steps)} steps, {calls} tool calls")
    usage = event.usage
    parts.append(f"{usage.input_tokens} in / {usage.output_tokens} out")
    parts.append(f"{event.latency_ms.total:.0f} ms")
    return f"[{' · '.join(parts)}]"


async def run_chat(
    client: FerrymanClient,
    request: ChatRequest,
    printer: ChatPrinter,
    *,
    timeout: float,
    cancel_grace: float = CANCEL_GRACE_SECONDS,
    control_topic: str = DEFAULT_MCP_CONTROL_TOPIC,
    **options: Any,
) -> int:
    """Send `request` through `client`, print its events, and return the exit code.

    Cancelling the task that runs this (what Ctrl-C does under `asyncio.run`) is taken as
    the user's interrupt: the request is cancelled on the workers (`client.cancel`), its
    end (normally `failed: cancelled`) is awaited up to `cancel_grace` seconds and printed,
    and 130 is returned. `options` are those of `FerrymanClient.chat_stream`.

    Raises:
        ValueError: an option is malformed.
        aiokafka.errors.KafkaError: publishing the request or reading replies failed.
    """
    stream = client.chat_stream(request, timeout=timeout, **options)
    reader = asyncio.create_task(_print_stream(stream, printer, timeout), name="ferryman-chat")
    try:
        return await asyncio.shield(reader)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling() == 0:
            raise  # the reader was cancelled by someone else: not an interrupt
        task.uncancel()
    if reader.done():  # it ended as the interrupt came: nothing left to cancel
        return EXIT_INTERRUPTED
    printer.line(f"[interrupted: cancelling request {stream.request_id}]")
    try:
        async with asyncio.timeout(cancel_grace):
            await stream.cancel(CANCEL_REASON, control_topic=control_topic)
            await reader
    except TimeoutError:
        printer.line(
            f"[no end of the request within {cancel_grace:g} s of the cancel; it may still run]"
        )
    except KafkaError as exc:
        printer.line(f"[could not publish the cancel: {exc}]")
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
    return EXIT_INTERRUPTED


async def _print_stream(
    stream: RequestStream[ChatEvent], printer: ChatPrinter, timeout: float
) -> int:
    try:
        async for event in stream:
            printer.show(event)
    except ChatFailedError as exc:
        printer.failed(exc.error)
        return EXIT_FAILED
    except TimeoutError:
        printer.line(f"no result within {timeout:.0f}s (is a worker running?)")
        return EXIT_USAGE
    return EXIT_OK


def _problem(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'request'}: {error['msg']}"
            for error in exc.errors(include_input=False)
        )
    return str(exc)


async def chat_command(connection: KafkaConnection, args: argparse.Namespace) -> int:
    """`ferryman chat PROMPT`: send the prompt and print the answer as it streams.

    Raises:
        LookupError: the reply topic does not exist.
        aiokafka.errors.KafkaError: Kafka could not be reached or refused the credentials.
    """
    try:
        request = chat_request(args)
    except ValueError as exc:
        print(f"ferryman chat: {_problem(exc)}", file=sys.stderr)
        return EXIT_USAGE
    printer = ChatPrinter(
        sys.stdout,
        sys.stderr,
        verbose=args.verbose,
        json_output=args.json,
        no_stream=args.no_stream,
    )
    async with FerrymanClient(
        connection,
        request_topic=args.request_topic,
        reply_topic=args.reply_topic,
        reply_partition=args.reply_partition,
        create_reply_topic=TopicSpec() if args.create_reply_topic else False,
    ) as client:
        return await run_chat(
            client,
            request,
            printer,
            timeout=args.timeout,
            tenant=args.tenant,
            expires_in=args.expires_in,
            control_topic=args.control_topic,
        )
