"""A local HTTP server speaking OpenAI's chat-completions wire format (SSE), with scenarios.

Used by provider tests (in-process), by integration tests and by the benchmark
(as a separate process: `python -m tests.fakes.openai_server --port 0`).

Each request picks the scenario registered for its `model` (or the default):
an echo answer streamed in tokens, tool calls streamed in fragments, HTTP
errors with retry-after headers, a connection reset before headers, delays
before headers or before the first token, and faults mid-stream (cut, stall,
malformed event, no terminator).
A scenario with `tool_steps` plays a multi-step tool loop (see `tests.fakes.tool_loop`):
each request's conversation is checked like OpenAI does (every `tool_calls` entry answered
by a `role: tool` message right after it, else HTTP 400) and picks the turn to play from
the tool rounds it already holds.
Messages and content parts with keys OpenAI does not know (a leaked `cache_control`) get
OpenAI's 400, as does a `prompt_cache_retention` other than `in_memory`/`24h`. A request
with a `prompt_cache_key` whose key, model, tools and messages but the last were seen
before reports those messages' tokens as `prompt_tokens_details.cached_tokens` (0 on the
first sight): OpenAI's prefix cache, routed by the key.
Every request is recorded for assertions. `GET /_stats` answers the chat calls, the TCP
connections that carried them and the concurrent streams (current and peak) since the last
`POST /_stats`, which starts a new window (the benchmark reads these).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.http_fake import FakeHttpServer, run_standalone
from tests.fakes.tool_loop import Turn, openai_conversation, play

MESSAGE_KEYS = {"role", "content", "name", "tool_calls", "tool_call_id", "refusal"}
PART_KEYS = {"type", "text", "image_url", "input_audio", "file"}
RETENTIONS = {"in_memory", "24h"}


@dataclass
class Scenario:
    """How the fake answers. All delays are seconds."""

    answer: str | None = None
    """The text to stream; None echoes the last user message."""
    tokens: int | None = None
    """Stream exactly this many tokens ("tok0 tok1 …"), overriding `answer`."""
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    """`[{"name": ..., "arguments": "<json>"}]`, streamed in fragments when set."""
    status: int | None = None
    """Answer with this HTTP error status instead."""
    fail_first: int | None = None
    """With `status`: fail only the first N requests for this model, then answer normally."""
    error_code: str | None = None
    """OpenAI `error.code` of the error body (e.g. `context_length_exceeded`)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers (e.g. `retry-after`)."""
    error_body: dict[str, Any] | None = None
    """The exact JSON body of the error response (default: an OpenAI-style error)."""
    delay_before_headers: float = 0.0
    reset_before_headers: bool = False
    """Abort the connection before sending any response (a reset before headers)."""
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    cut_after: int | None = None
    """Close the connection after this many content chunks."""
    stall_after: int | None = None
    """Stop sending (but keep the connection) after this many content chunks."""
    malformed_after: int | None = None
    """Send an undecodable event after this many content chunks."""
    error_event_after: int | None = None
    """Send an in-stream `{"error": ...}` event after this many content chunks."""
    send_done: bool = True
    hold_open: bool = False
    """After the usage chunk, send neither `[DONE]` nor the end of the response: keep the
    connection open (a server that never ends a finished stream)."""
    finish_reason: str | None = None
    """Override the finish reason (default: stop, or tool_calls with tool calls)."""
    content_filter_results: dict[str, Any] | None = None
    """Azure's per-choice `content_filter_results`, sent with the finishing chunk."""
    cached_tokens: int | None = None
    """Report this `prompt_tokens_details.cached_tokens` (default: the prefix cache's)."""
    numbered: bool = False
    """Start the answer with the call's ordinal, so every call answers differently (as a
    real model does)."""
    tool_steps: list[list[dict[str, str]]] = field(default_factory=list)
    """A scripted tool loop: a request whose conversation already holds k assistant turns with
    tool calls gets the calls of `tool_steps[k]` (`{"name", "arguments": "<json>"}`; several
    are parallel calls, ids `call_<k>_<i>`), or the final text answer once k is past the
    script. Overrides `tool_calls`."""
    echo_tool_results: bool = False
    """The final answer is `tool results: ` and the last round's tool-message contents, in call
    order, joined by ` | ` (overrides `answer` and `tokens`)."""
    delays_from_step: int = 0
    """`delay_before_headers`, `first_token_delay` and `token_delay` apply only to turns k >=
    this one (k counts the tool rounds of the conversation), so one step can be made slow."""


@dataclass
class ChatStats:
    """Chat calls per TCP connection and concurrent streams, over a window."""

    calls: int = 0
    connections: set[tuple[str, int]] = field(default_factory=set)
    """Connections (client address, port) that carried a chat call in the window."""
    seen: set[tuple[str, int]] = field(default_factory=set)
    """Every connection that ever carried a chat call."""
    new_connections: int = 0
    active_streams: int = 0
    peak_streams: int = 0

    def called(self, peer: tuple[str, int]) -> None:
        self.calls += 1
        self.connections.add(peer)
        if peer not in self.seen:
            self.seen.add(peer)
            self.new_connections += 1

    def reset(self) -> None:
        """Start a new window (the peak restarts from the streams open now)."""
        self.calls, self.new_connections = 0, 0
        self.connections.clear()
        self.peak_streams = self.active_streams

    def snapshot(self) -> dict[str, int]:
        return {
            "calls": self.calls,
            "connections": len(self.connections),
            "new_connections": self.new_connections,
            "active_streams": self.active_streams,
            "peak_streams": self.peak_streams,
        }


@dataclass
class RecordedRequest:
    """One request the fake received."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float
    """`loop.time()` when the request arrived (virtual on a `VirtualTimeLoop`)."""


class FakeOpenAI(FakeHttpServer):
    """The fake server. Use `await start()` / `await stop()`, then `base_url`."""

    scenario_type = Scenario

    def __init__(self, default: Scenario | None = None) -> None:
        super().__init__(default or Scenario())
        self.requests: list[RecordedRequest] = []
        self._failures: dict[str, int] = {}
        self.stats = ChatStats()
        self.cached_prefixes: set[str] = set()
        """Digests of (prompt_cache_key, model, tools, messages but the last) seen."""

    @property
    def base_url(self) -> str:
        """The `/v1` base URL to give the SDK."""
        return f"http://127.0.0.1:{self.port}/v1"

    def chat_requests(self) -> list[RecordedRequest]:
        """Recorded chat-completion requests."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/_stats":
            if request.method == "POST":
                self.stats.reset()
            return web.json_response(self.stats.snapshot())
        body: dict[str, Any] = {}
        if request.can_read_body:
            body = await request.json()
        self.requests.append(
            RecordedRequest(
                request.path,
                dict(request.query),
                dict(request.headers),
                body,
                asyncio.get_running_loop().time(),
            )
        )
        if request.method == "GET" and request.path.endswith("/models"):
            return web.json_response(
                {
                    "object": "list",
                    "data": [
                        {"id": "gpt-fake", "object": "model", "created": 0, "owned_by": "fake"}
                    ],
                }
            )
        if not request.path.endswith("/chat/completions"):
            return web.json_response({"error": {"message": "not found"}}, status=404)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer is not None:
            self.stats.called((str(peer[0]), int(peer[1])))
        conversation = openai_conversation(body.get("messages") or [])
        if (refusal := _refusal(body, conversation.error, conversation.error_param)) is not None:
            return refusal
        scenario, turn = play(self.scenario_for(body.get("model", "")), conversation)
        if scenario.cached_tokens is None and body.get("prompt_cache_key") is not None:
            scenario = dataclasses.replace(scenario, cached_tokens=self._cached_prefix(body))
        if scenario.numbered:
            numbered = f"call {len(self.requests)}: {_answer(body, scenario)}"
            scenario = dataclasses.replace(scenario, answer=numbered, numbered=False)
        if scenario.delay_before_headers:
            await asyncio.sleep(scenario.delay_before_headers)
        if scenario.reset_before_headers:
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        failing = scenario.status is not None
        if failing and scenario.fail_first is not None:
            seen = self._failures.get(body.get("model", ""), 0)
            failing = seen < scenario.fail_first
            self._failures[body.get("model", "")] = seen + 1
        if failing:
            error = {
                "message": f"fake error {scenario.status}",
                "type": "fake",
                "code": scenario.error_code,
            }
            payload = scenario.error_body or {"error": error}
            return web.json_response(payload, status=scenario.status, headers=scenario.headers)
        if body.get("stream"):
            self.stats.active_streams += 1
            self.stats.peak_streams = max(self.stats.peak_streams, self.stats.active_streams)
            try:
                return await self._stream(request, body, scenario, turn)
            finally:
                self.stats.active_streams -= 1
        return web.json_response(_completion(body, scenario, turn), headers=scenario.headers)

    def _cached_prefix(self, body: dict[str, Any]) -> int:
        """The tokens of the request's prefix (messages but the last) if it was seen before
        under the same key; records it."""
        prefix = (body.get("messages") or [])[:-1]
        seen = [body["prompt_cache_key"], body.get("model"), body.get("tools"), prefix]
        digest = hashlib.sha256(json.dumps(seen, sort_keys=True).encode()).hexdigest()
        hit = digest in self.cached_prefixes
        self.cached_prefixes.add(digest)
        return _prompt_tokens(prefix) if hit else 0

    async def _stream(
        self, request: web.Request, body: dict[str, Any], scenario: Scenario, turn: Turn | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"content-type": "text/event-stream", **scenario.headers}
        )
        await response.prepare(request)
        model = body.get("model", "gpt-fake")

        async def send(payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            await response.write(f"data: {data}\n\n".encode())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        if scenario.first_token_delay:
            await asyncio.sleep(scenario.first_token_delay)
        await send(chunk({"role": "assistant", "content": ""}))
        pieces = _pieces(body, scenario, turn)
        for n, piece in enumerate(pieces):
            if n and scenario.token_delay:
                await asyncio.sleep(scenario.token_delay)
            if scenario.cut_after is not None and n == scenario.cut_after:
                assert request.transport is not None
                request.transport.abort()
                return response
            if scenario.stall_after is not None and n == scenario.stall_after:
                await asyncio.sleep(3600)
            if scenario.malformed_after is not None and n == scenario.malformed_after:
                await send("{not json")
            if scenario.error_event_after is not None and n == scenario.error_event_after:
                await send(
                    {"error": {"message": "fake mid-stream failure", "type": "server_error"}}
                )
                return response
            await send(chunk(piece))
        finish = scenario.finish_reason or ("tool_calls" if scenario.tool_calls else "stop")
        closing = chunk({}, finish)
        if scenario.content_filter_results is not None:
            closing["choices"][0]["content_filter_results"] = scenario.content_filter_results
        await send(closing)
        usage = _usage(body, pieces, turn, scenario.cached_tokens)
        if (body.get("stream_options") or {}).get("include_usage"):
            await send(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
        if scenario.hold_open:
            await asyncio.sleep(3600)
        if scenario.send_done:
            await send("[DONE]")
        await response.write_eof()
        return response


def _answer(body: dict[str, Any], scenario: Scenario) -> str:
    if scenario.tokens is not None:
        return " ".join(f"tok{i}" for i in range(scenario.tokens))
    if scenario.answer is not None:
        return scenario.answer
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if p.get("type") == "text")
            return f"Echo: {content}"
    return "Echo:"


def _call_id(turn: Turn | None, i: int) -> str:
    """Ids unique over a scripted conversation (`call_<k>_<i>`), else `call_<i>`."""
    return f"call_{i}" if turn is None else f"call_{turn.step}_{i}"


def _pieces(body: dict[str, Any], scenario: Scenario, turn: Turn | None) -> list[dict[str, Any]]:
    """The content deltas of the answer: words, or tool-call fragments."""
    if scenario.tool_calls:
        pieces: list[dict[str, Any]] = []
        for i, call in enumerate(scenario.tool_calls):
            pieces.append(
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": _call_id(turn, i),
                            "type": "function",
                            "function": {"name": call["name"], "arguments": ""},
                        }
                    ]
                }
            )
            args = call["arguments"]
            for start in range(0, len(args), 5):
                pieces.append(
                    {
                        "tool_calls": [
                            {"index": i, "function": {"arguments": args[start : start + 5]}}
                        ]
                    }
                )
        return pieces
    words = _answer(body, scenario).split(" ")
    return [{"content": w if i == 0 else f" {w}"} for i, w in enumerate(words)]


def _refusal(
    body: dict[str, Any], conversation_error: str | None, param: str | None
) -> web.Response | None:
    """OpenAI's 400 for a broken conversation or an argument it does not know, else None."""
    if conversation_error is None and (param := _unknown_argument(body)) is not None:
        conversation_error = f"Unrecognized request argument supplied: {param}"
    if conversation_error is None:
        return None
    error = {
        "message": conversation_error,
        "type": "invalid_request_error",
        "param": param,
        "code": None,
    }
    return web.json_response({"error": error}, status=400)


def _unknown_argument(body: dict[str, Any]) -> str | None:
    """The path of the first message or part key OpenAI would refuse, or a bad retention."""
    retention = body.get("prompt_cache_retention")
    if retention is not None and retention not in RETENTIONS:
        return "prompt_cache_retention"
    for m, message in enumerate(body.get("messages") or ()):
        if unknown := sorted(set(message) - MESSAGE_KEYS):
            return f"messages[{m}].{unknown[0]}"
        content = message.get("content")
        for p, part in enumerate(content if isinstance(content, list) else ()):
            if unknown := sorted(set(part) - PART_KEYS):
                return f"messages[{m}].content[{p}].{unknown[0]}"
    return None


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content", "")).split()) for m in messages)


def _usage(
    body: dict[str, Any], pieces: list[dict[str, Any]], turn: Turn | None, cached: int | None
) -> dict[str, Any]:
    messages = body.get("messages", [])
    prompt = _prompt_tokens(messages)
    if turn is not None:  # a scripted loop: every turn's input grows with the conversation
        prompt += len(messages)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": len(pieces),
        "total_tokens": prompt + len(pieces),
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


def _completion(body: dict[str, Any], scenario: Scenario, turn: Turn | None) -> dict[str, Any]:
    pieces = _pieces(body, scenario, turn)
    message: dict[str, Any] = {"role": "assistant", "content": None}
    if scenario.tool_calls:
        message["tool_calls"] = [
            {
                "id": _call_id(turn, i),
                "type": "function",
                "function": {"name": c["name"], "arguments": c["arguments"]},
            }
            for i, c in enumerate(scenario.tool_calls)
        ]
    else:
        message["content"] = _answer(body, scenario)
    finish = scenario.finish_reason or ("tool_calls" if scenario.tool_calls else "stop")
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "gpt-fake"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": _usage(body, pieces, turn, scenario.cached_tokens),
    }


def main() -> None:
    """Run the fake standalone; prints the bound port on stdout."""
    run_standalone(FakeOpenAI, Scenario, __doc__ or "")


if __name__ == "__main__":
    main()
