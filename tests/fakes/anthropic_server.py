"""A local HTTP server speaking Anthropic's Messages API wire format (SSE), with scenarios.

Used by provider tests (in-process), and standalone for integration tests and the
benchmark (`python -m tests.fakes.anthropic_server --port 0`).

Each request picks the scenario registered for its `model` (or the default): an
echo answer streamed in `text_delta` tokens, tool calls streamed as
`input_json_delta` fragments (after an optional text block), HTTP errors with
Anthropic's error body and retry-after headers, delays before headers or before
the first token, and faults mid-stream (cut, clean end, stall, malformed event,
`error` event, no `message_stop`). Every request is recorded for assertions.

A scenario with `tool_steps` plays a multi-step tool loop (see `tests.fakes.tool_loop`):
each request's conversation is checked like Anthropic does (every `tool_use` block answered
by a `tool_result` in the very next user message, else HTTP 400) and picks the turn to play
from the tool rounds it already holds.

Prompt caching is checked and played like Anthropic does (`tests.fakes.anthropic_cache`):
invalid `cache_control` markers get a 400, and a request with markers reports the cache
reads and writes its prefixes make (`cache_read_input_tokens`, `cache_creation_input_tokens`,
`cache_creation.ephemeral_1h_input_tokens`) unless the scenario sets them.

Streams carry `event:` lines: the SDK skips SSE events without one. The key is
accepted as `Authorization: Bearer <key>` (what anthropic 2.x sends) or `x-api-key`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.anthropic_cache import CacheRequestError, PromptCacheSim
from tests.fakes.http_fake import FakeHttpServer, run_standalone
from tests.fakes.tool_loop import Turn, anthropic_conversation, play

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

DEFAULT_MODELS = ["claude-fake-haiku", "claude-fake-opus", "claude-fake-sonnet"]


@dataclass
class Scenario:
    """How the fake answers. All delays are seconds."""

    answer: str | None = None
    """The text to stream; None echoes the last user message."""
    tokens: int | None = None
    """Stream exactly this many tokens ("tok0 tok1 …"), overriding `answer`."""
    preamble: str | None = None
    """With tool calls: a text block streamed before them (shifts Anthropic's block indexes)."""
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    """`[{"name": ..., "arguments": "<json>"}]`, streamed as `input_json_delta` fragments;
    empty arguments stream no delta at all."""
    stop_reason: str | None = None
    """Override the stop reason (default: end_turn, or tool_use with tool calls)."""
    response_model: str | None = None
    """The model named in `message_start` (default: the requested one)."""
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_creation_1h_input_tokens: int | None = None
    """The 1-hour part of the writes (`cache_creation.ephemeral_1h_input_tokens`)."""
    input_tokens: int | None = None
    """The uncached `input_tokens` to report (default: the words of the prompt)."""
    status: int | None = None
    """Answer with this HTTP error status instead."""
    error_type: str | None = None
    """Anthropic `error.type` of the error (default: the status's usual type)."""
    error_message: str | None = None
    """`error.message` of the error (e.g. "prompt is too long: …")."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers (e.g. `retry-after`)."""
    delay_before_headers: float = 0.0
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    cut_after: int | None = None
    """Abort the connection after this many content deltas."""
    end_after: int | None = None
    """End the response cleanly (EOF, no `message_delta`) after this many content deltas."""
    stall_after: int | None = None
    """Stop sending (but keep the connection) after this many content deltas."""
    malformed_after: int | None = None
    """Send an undecodable event after this many content deltas."""
    error_event_after: int | None = None
    """Send an in-stream `error` event after this many content deltas, then end."""
    error_event_type: str = "overloaded_error"
    send_message_stop: bool = True
    tool_steps: list[list[dict[str, str]]] = field(default_factory=list)
    """A scripted tool loop: a request whose conversation already holds k assistant turns with
    `tool_use` blocks gets the calls of `tool_steps[k]` (`{"name", "arguments": "<json>"}`;
    several are parallel calls, ids `toolu_<k>_<i>`), or the final text answer once k is past
    the script. Overrides `tool_calls`."""
    echo_tool_results: bool = False
    """The final answer is `tool results: ` and the last round's `tool_result` contents (text;
    `error: ` before those with `is_error`), in call order, joined by ` | ` (overrides
    `answer` and `tokens`)."""
    delays_from_step: int = 0
    """`delay_before_headers`, `first_token_delay` and `token_delay` apply only to turns k >=
    this one (k counts the tool rounds of the conversation), so one step can be made slow."""


@dataclass
class RecordedRequest:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float
    """`loop.time()` when the request arrived (virtual on a `VirtualTimeLoop`)."""


@dataclass
class _Frame:
    event: str
    data: dict[str, Any]
    counted: bool = False
    """A content delta: the unit `cut_after` and friends count."""


class FakeAnthropic(FakeHttpServer):
    """The fake server. Use `await start()` / `await stop()`, then `base_url`.

    Args:
        default: the scenario for models without their own.
        api_key: when set, requests must carry this key (Bearer or `x-api-key`).
        models: ids served by `GET /v1/models`, `page_size` per page.
    """

    scenario_type = Scenario

    def __init__(
        self,
        default: Scenario | None = None,
        *,
        api_key: str | None = None,
        models: list[str] | None = None,
        page_size: int = 2,
    ) -> None:
        super().__init__(default or Scenario())
        self.requests: list[RecordedRequest] = []
        self.api_key = api_key
        self.models = list(DEFAULT_MODELS if models is None else models)
        self.page_size = page_size
        self.prompt_cache = PromptCacheSim()

    @property
    def base_url(self) -> str:
        """The base URL to give the SDK (no `/v1`: the SDK's paths carry it)."""
        return f"http://127.0.0.1:{self.port}"

    def message_requests(self) -> list[RecordedRequest]:
        """Recorded `POST /v1/messages` requests."""
        return [r for r in self.requests if r.path.endswith("/v1/messages")]

    def _authorized(self, request: web.Request) -> bool:
        if self.api_key is None:
            return True
        bearer = request.headers.get("authorization", "")
        return (
            request.headers.get("x-api-key") == self.api_key or bearer == f"Bearer {self.api_key}"
        )

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = {}
        if request.can_read_body:
            body = await request.json()
        self.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                body,
                asyncio.get_running_loop().time(),
            )
        )
        if not self._authorized(request):
            return _error(401, None, "invalid x-api-key", {})
        if "anthropic-version" not in request.headers:
            return _error(400, None, "anthropic-version: header is required", {})
        if request.method == "GET" and request.path == "/v1/models":
            return web.json_response(self._models_page(request.query))
        if request.method != "POST" or request.path != "/v1/messages":
            return _error(404, None, f"no route {request.method} {request.path}", {})
        conversation = anthropic_conversation(body.get("messages") or [])
        if conversation.error is not None:
            return _error(400, "invalid_request_error", conversation.error, {})
        scenario, turn = play(self.scenario_for(body.get("model", "")), conversation)
        try:
            cached = self.prompt_cache.usage(body, write=scenario.status is None)
        except CacheRequestError as exc:
            return _error(400, "invalid_request_error", str(exc), {})
        if cached is not None and scenario.cache_read_input_tokens is None:
            scenario = dataclasses.replace(
                scenario,
                input_tokens=cached.input_tokens,
                cache_read_input_tokens=cached.read,
                cache_creation_input_tokens=cached.write,
                cache_creation_1h_input_tokens=cached.write_1h,
            )
        if scenario.delay_before_headers:
            await asyncio.sleep(scenario.delay_before_headers)
        if scenario.status is not None:
            return _error(
                scenario.status, scenario.error_type, scenario.error_message, scenario.headers
            )
        if body.get("stream"):
            return await self._stream(request, body, scenario, turn)
        return web.json_response(_message(body, scenario, turn), headers=scenario.headers)

    def _models_page(self, query: Any) -> dict[str, Any]:
        start = 0
        if after := query.get("after_id"):
            start = self.models.index(after) + 1
        limit = int(query.get("limit") or self.page_size)
        page = self.models[start : start + limit]
        return {
            "data": [
                {
                    "type": "model",
                    "id": model,
                    "display_name": model,
                    "created_at": "2025-01-01T00:00:00Z",
                    "lifecycle": "active",
                }
                for model in page
            ],
            "has_more": start + limit < len(self.models),
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        }

    async def _stream(
        self, request: web.Request, body: dict[str, Any], scenario: Scenario, turn: Turn | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"content-type": "text/event-stream", **scenario.headers}
        )
        await response.prepare(request)

        async def send(event: str, data: dict[str, Any] | str) -> None:
            payload = data if isinstance(data, str) else json.dumps(data)
            await response.write(f"event: {event}\ndata: {payload}\n\n".encode())

        if scenario.first_token_delay:
            await asyncio.sleep(scenario.first_token_delay)
        frames = _frames(body, scenario, turn)
        sent = 0
        for frame in frames:
            if frame.counted:
                if sent and scenario.token_delay:
                    await asyncio.sleep(scenario.token_delay)
                if scenario.cut_after == sent:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                if scenario.end_after == sent:
                    await response.write_eof()
                    return response
                if scenario.stall_after == sent:
                    await asyncio.sleep(3600)
                if scenario.malformed_after == sent:
                    await send("content_block_delta", "{not json")
                if scenario.error_event_after == sent:
                    error = {"type": scenario.error_event_type, "message": "fake mid-stream error"}
                    await send("error", {"type": "error", "error": error})
                    await response.write_eof()
                    return response
                sent += 1
            if frame.event == "message_stop" and not scenario.send_message_stop:
                continue
            await send(frame.event, frame.data)
        await response.write_eof()
        return response


def _error(
    status: int, error_type: str | None, message: str | None, headers: dict[str, str]
) -> web.Response:
    error = {
        "type": error_type or _ERROR_TYPES.get(status, "api_error"),
        "message": message or f"fake error {status}",
    }
    return web.json_response(
        {"type": "error", "error": error, "request_id": "req_fake"},
        status=status,
        headers=headers,
    )


def _tool_use_id(turn: Turn | None, i: int) -> str:
    """Ids unique over a scripted conversation (`toolu_<k>_<i>`), else `toolu_<i>`."""
    return f"toolu_{i}" if turn is None else f"toolu_{turn.step}_{i}"


def _answer(body: dict[str, Any], scenario: Scenario) -> str:
    if scenario.tokens is not None:
        return " ".join(f"tok{i}" for i in range(scenario.tokens))
    if scenario.answer is not None:
        return scenario.answer
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                texts = [p.get("text", "") for p in content if p.get("type") == "text"]
                if not texts:
                    continue  # a turn of tool results
                content = " ".join(texts)
            return f"Echo: {content}"
    return "Echo:"


def _words(text: str) -> list[str]:
    return [w if i == 0 else f" {w}" for i, w in enumerate(text.split(" "))]


def _input_tokens(body: dict[str, Any]) -> int:
    system = str(body.get("system", ""))
    words = len(system.split()) + sum(
        len(json.dumps(m.get("content", "")).split()) for m in body.get("messages", [])
    )
    return max(words, 1)


def _usage(body: dict[str, Any], scenario: Scenario, output_tokens: int) -> dict[str, Any]:
    input_tokens = _input_tokens(body) if scenario.input_tokens is None else scenario.input_tokens
    usage: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    if scenario.cache_read_input_tokens is not None:
        usage["cache_read_input_tokens"] = scenario.cache_read_input_tokens
    if scenario.cache_creation_input_tokens is not None:
        usage["cache_creation_input_tokens"] = scenario.cache_creation_input_tokens
    if scenario.cache_creation_1h_input_tokens is not None:
        long = scenario.cache_creation_1h_input_tokens
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": (scenario.cache_creation_input_tokens or 0) - long,
            "ephemeral_1h_input_tokens": long,
        }
    return usage


def _stop_reason(scenario: Scenario) -> str:
    return scenario.stop_reason or ("tool_use" if scenario.tool_calls else "end_turn")


def _frames(body: dict[str, Any], scenario: Scenario, turn: Turn | None) -> list[_Frame]:
    """The whole stream: message_start, ping, content blocks, message_delta, message_stop."""
    model = scenario.response_model or body.get("model", "claude-fake")
    frames = [
        _Frame(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": _usage(body, scenario, 1),
                },
            },
        ),
        _Frame("ping", {"type": "ping"}),
    ]
    deltas = 0

    def text_block(index: int, text: str) -> None:
        nonlocal deltas
        frames.append(
            _Frame(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
        )
        for word in _words(text):
            deltas += 1
            frames.append(
                _Frame(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": word},
                    },
                    counted=True,
                )
            )
        frames.append(_Frame("content_block_stop", {"type": "content_block_stop", "index": index}))

    index = 0
    if scenario.tool_calls:
        if scenario.preamble is not None:
            text_block(index, scenario.preamble)
            index += 1
        for i, call in enumerate(scenario.tool_calls):
            frames.append(
                _Frame(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {
                            "type": "tool_use",
                            "id": _tool_use_id(turn, i),
                            "name": call["name"],
                            "input": {},
                        },
                    },
                )
            )
            args = call["arguments"]
            for start in range(0, len(args), 5):
                deltas += 1
                frames.append(
                    _Frame(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {
                                "type": "input_json_delta",
                                "partial_json": args[start : start + 5],
                            },
                        },
                        counted=True,
                    )
                )
            frames.append(
                _Frame("content_block_stop", {"type": "content_block_stop", "index": index})
            )
            index += 1
    else:
        text_block(index, _answer(body, scenario))
    frames.append(
        _Frame(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": _stop_reason(scenario), "stop_sequence": None},
                "usage": {"output_tokens": deltas},
            },
        )
    )
    frames.append(_Frame("message_stop", {"type": "message_stop"}))
    return frames


def _message(body: dict[str, Any], scenario: Scenario, turn: Turn | None) -> dict[str, Any]:
    """The non-streamed answer."""
    content: list[dict[str, Any]] = []
    if scenario.tool_calls:
        if scenario.preamble is not None:
            content.append({"type": "text", "text": scenario.preamble})
        content.extend(
            {
                "type": "tool_use",
                "id": _tool_use_id(turn, i),
                "name": call["name"],
                "input": json.loads(call["arguments"] or "{}"),
            }
            for i, call in enumerate(scenario.tool_calls)
        )
    else:
        content.append({"type": "text", "text": _answer(body, scenario)})
    output = sum(len(json.dumps(block).split()) for block in content)
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": scenario.response_model or body.get("model", "claude-fake"),
        "content": content,
        "stop_reason": _stop_reason(scenario),
        "stop_sequence": None,
        "usage": _usage(body, scenario, output),
    }


def main() -> None:
    """Run the fake standalone; prints the bound port on stdout."""
    run_standalone(FakeAnthropic, Scenario, __doc__ or "")


if __name__ == "__main__":
    main()
