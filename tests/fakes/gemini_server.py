"""A local HTTP server speaking Gemini's `generateContent` wire format (SSE), with scenarios.

Used by the Gemini provider tests (in-process) and standalone
(`python -m tests.fakes.gemini_server --port 0`).

Routes, under any API version prefix (`/v1`, `/v1beta`, …):

- `POST /{version}/models/{model}:streamGenerateContent?alt=sse` — SSE, one
  `data: <json>\\r\\n\\r\\n` per chunk;
- `POST /{version}/models/{model}:generateContent` — one JSON document;
- `GET /{version}/models` — two pages of models (`nextPageToken`);
- `POST/GET/PATCH/DELETE /{v1beta|v1alpha}/cachedContents[/{id}]` — cached contents (see
  `tests.fakes.gemini_caches`); a generate call naming `cachedContent` is checked against
  them (only on those versions), and its usage counts the cached tokens as
  `cachedContentTokenCount` (part of `promptTokenCount`).

Each request picks the scenario registered for its model (or the default): an
echo answer streamed in tokens, function calls (parallel, with or without ids,
with thought signatures), usage, finish reasons, a blocked prompt, HTTP errors
with `retry-after` headers and `RetryInfo` details, delays, and faults
mid-stream (cut, stall, malformed event, in-stream error, no finish reason),
and answers paused with a continuation token. Every request is recorded.

A scenario with `tool_steps` plays a multi-step tool loop as a Gemini 3 model does (see
`tests.fakes.tool_loop`): function calls have no id, the first call of each step carries a
thought signature, and each request's conversation is checked like Gemini does (every model
turn of function calls answered by as many function responses in the next user turn; the
first call of each step of the current turn must bring its signature back, else HTTP 400).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes import gemini_caches
from tests.fakes.gemini_caches import CachedContents
from tests.fakes.http_fake import FakeHttpServer, run_standalone
from tests.fakes.tool_loop import Turn, gemini_conversation, gemini_signature, play

_PATH = re.compile(r"^/(?P<version>[^/]+)/models/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$")
_LIST = re.compile(r"^/(?P<version>[^/]+)/models$")

MODELS = ["models/gemini-fake-flash", "models/gemini-fake-pro", "models/embedding-fake"]
"""What `GET /models` lists (the last one on the second page)."""


@dataclass
class Scenario:
    """How the fake answers. All delays are seconds."""

    answer: str | None = None
    """The text to stream; None echoes the last user text."""
    tokens: int | None = None
    """Stream exactly this many tokens ("tok0 tok1 …"), overriding `answer`."""
    thought: str | None = None
    """A `thought: true` part sent first (a thought summary clients must not see)."""
    function_calls: list[dict[str, Any]] = field(default_factory=list)
    """`[{"name": ..., "args": {...}, "id"?: ..., "thought_signature"?: <base64>}]`."""
    calls_in_one_chunk: bool = True
    """Send all function calls in one chunk (as Gemini does), else one chunk per call."""
    text_signature: str | None = None
    """A base64 thought signature on the last text part."""
    finish_reason: str | None = None
    """Override the finish reason (default STOP)."""
    send_finish_reason: bool = True
    cached_tokens: int | None = None
    thoughts_tokens: int | None = None
    tool_use_prompt_tokens: int | None = None
    block_reason: str | None = None
    """Answer with `promptFeedback.blockReason` and no candidates."""
    blocked_categories: list[str] = field(default_factory=list)
    status: int | None = None
    """Answer with this HTTP error status instead."""
    error_status: str | None = None
    """`error.status` of the error body (default from the HTTP status)."""
    error_message: str | None = None
    error_details: list[dict[str, Any]] = field(default_factory=list)
    """`error.details`, e.g. `[{"@type": ".../google.rpc.RetryInfo", "retryDelay": "12s"}]`."""
    headers: dict[str, str] = field(default_factory=dict)
    delay_before_headers: float = 0.0
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
    error_event_code: int = 503
    continuation_hops: int = 0
    """Pause the answer this many times (finish reason CONTINUATION with a token)."""
    tool_steps: list[list[dict[str, str]]] = field(default_factory=list)
    """A scripted tool loop: a request whose conversation already holds k model turns with
    function calls gets the calls of `tool_steps[k]` (`{"name", "arguments": "<json>"}`;
    several are parallel calls), or the final text answer once k is past the script.
    Calls have no id (as Gemini sends them); the first call of turn k carries the thought
    signature `gemini_signature(k)` (base64 of `sig-<k>-0`), which the next requests must
    bring back. Overrides `function_calls` (and `answer` on the steps that call tools)."""
    echo_tool_results: bool = False
    """The final answer is `tool results: ` and the last round's `functionResponse.response`s
    (the string of a lone `result`/`output` field, `error: ` and the string of a lone `error`
    field, else compact JSON), in call order, joined by ` | ` (overrides `answer`, `tokens`)."""
    delays_from_step: int = 0
    """`delay_before_headers`, `first_token_delay` and `token_delay` apply only to turns k >=
    this one (k counts the tool rounds of the conversation), so one step can be made slow."""


_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


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


class FakeGemini(FakeHttpServer):
    """The fake server. Use `await start()` / `await stop()`, then `base_url`."""

    scenario_type = Scenario

    def __init__(self, default: Scenario | None = None) -> None:
        super().__init__(default or Scenario())
        self.requests: list[RecordedRequest] = []
        self.caches = CachedContents()
        """The cached contents (set `caches.clock` to share a test's clock)."""

    @property
    def base_url(self) -> str:
        """The base URL to give the SDK (it appends the API version)."""
        return f"http://127.0.0.1:{self.port}/"

    def generate_requests(self) -> list[RecordedRequest]:
        """Recorded `generateContent` and `streamGenerateContent` requests."""
        return [r for r in self.requests if r.method == "POST" and _PATH.match(r.path)]

    def cache_requests(self, method: str | None = None) -> list[RecordedRequest]:
        """Recorded `cachedContents` requests (of one HTTP method when given)."""
        return [
            r
            for r in self.requests
            if gemini_caches.PATH.match(r.path) and method in (None, r.method)
        ]

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
        if request.method == "GET" and _LIST.match(request.path):
            return _list_models(request)
        if gemini_caches.PATH.match(request.path):
            return await self.caches.answer(request, body)
        match = _PATH.match(request.path)
        if request.method != "POST" or match is None:
            return _error(404, "NOT_FOUND", f"no route for {request.path}")
        if match["method"] not in ("streamGenerateContent", "generateContent"):
            return _error(404, "NOT_FOUND", f"unknown method {match['method']}")
        model = match["model"]
        cached = 0
        if "cachedContent" in body:
            if match["version"] not in gemini_caches.CACHE_VERSIONS:
                return _error(
                    400, "INVALID_ARGUMENT", 'Invalid JSON payload: unknown name "cachedContent"'
                )
            key = request.headers.get("x-goog-api-key")
            cached, refused = self.caches.check_generate(body, model, key)
            if refused is not None:
                return refused
        scenario = self.scenario_for(model)
        conversation = gemini_conversation(
            body.get("contents") or [], signatures=bool(scenario.tool_steps)
        )
        if conversation.error is not None:
            return _error(400, "INVALID_ARGUMENT", conversation.error)
        scenario, turn = play(scenario, conversation, calls_field="function_calls", to_call=_args)
        if turn is not None and turn.calls:
            first = {**scenario.function_calls[0], "thought_signature": gemini_signature(turn.step)}
            calls = [first, *scenario.function_calls[1:]]
            scenario = dataclasses.replace(scenario, function_calls=calls, answer=None)
        if scenario.delay_before_headers:
            await asyncio.sleep(scenario.delay_before_headers)
        if scenario.status is not None:
            return _error(
                scenario.status,
                scenario.error_status or _STATUS_NAMES.get(scenario.status, "UNKNOWN"),
                scenario.error_message or f"fake error {scenario.status}",
                scenario.error_details,
                scenario.headers,
            )
        chunks = _chunks(body, model, scenario, turn, cached)
        if match["method"] == "generateContent":
            return web.json_response(_merge(chunks), headers=scenario.headers)
        return await self._stream(request, chunks, scenario)

    async def _stream(
        self, request: web.Request, chunks: list[dict[str, Any]], scenario: Scenario
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"content-type": "text/event-stream", **scenario.headers}
        )
        # The client may give up midway (a timeout, an early stop).
        with contextlib.suppress(ConnectionResetError):
            await self._send_chunks(request, response, chunks, scenario)
        return response

    async def _send_chunks(
        self,
        request: web.Request,
        response: web.StreamResponse,
        chunks: list[dict[str, Any]],
        scenario: Scenario,
    ) -> None:
        await response.prepare(request)

        async def send(payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            await response.write(f"data: {data}\r\n\r\n".encode())

        if scenario.first_token_delay:
            await asyncio.sleep(scenario.first_token_delay)
        for n, chunk in enumerate(chunks):
            if n and scenario.token_delay:
                await asyncio.sleep(scenario.token_delay)
            if scenario.cut_after is not None and n == scenario.cut_after:
                assert request.transport is not None
                request.transport.abort()
                return
            if scenario.stall_after is not None and n == scenario.stall_after:
                await asyncio.sleep(3600)
            if scenario.malformed_after is not None and n == scenario.malformed_after:
                await send("{not json")
            if scenario.error_event_after is not None and n == scenario.error_event_after:
                code = scenario.error_event_code
                await send(
                    {
                        "error": {
                            "code": code,
                            "message": "fake mid-stream failure",
                            "status": _STATUS_NAMES.get(code, "UNKNOWN"),
                        }
                    }
                )
                return
            await send(chunk)
        await response.write_eof()


def _error(
    status: int,
    name: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    error: dict[str, Any] = {"code": status, "message": message, "status": name}
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=status, headers=headers)


def _list_models(request: web.Request) -> web.Response:
    if request.query.get("pageToken") == "page-2":
        return web.json_response({"models": [{"name": name} for name in MODELS[2:]]})
    return web.json_response(
        {"models": [{"name": name} for name in MODELS[:2]], "nextPageToken": "page-2"}
    )


def _user_text(body: dict[str, Any]) -> str:
    for content in reversed(body.get("contents", [])):
        if content.get("role", "user") != "user":
            continue
        texts = [p["text"] for p in content.get("parts", []) if "text" in p]
        if texts:
            return " ".join(texts)
    return ""


def _answer(body: dict[str, Any], scenario: Scenario) -> str:
    if scenario.tokens is not None:
        return " ".join(f"tok{i}" for i in range(scenario.tokens))
    if scenario.answer is not None:
        return scenario.answer
    return f"Echo: {_user_text(body)}"


def _args(call: dict[str, str]) -> dict[str, Any]:
    """A scripted `{"name", "arguments": "<json>"}` call as a `function_calls` entry."""
    return {"name": call["name"], "args": json.loads(call["arguments"] or "{}")}


def _call_part(call: dict[str, Any]) -> dict[str, Any]:
    function_call: dict[str, Any] = {"name": call["name"], "args": call.get("args", {})}
    if "id" in call:
        function_call["id"] = call["id"]
    part: dict[str, Any] = {"functionCall": function_call}
    if "thought_signature" in call:
        part["thoughtSignature"] = call["thought_signature"]
    return part


def _prompt_tokens(body: dict[str, Any], turn: Turn | None) -> int:
    parts = [p for c in body.get("contents", []) for p in c.get("parts", [])]
    prompt = sum(len(str(p.get("text", "")).split()) for p in parts)
    if turn is not None:  # a scripted loop: every turn's input grows with the conversation
        prompt += len(parts)
    return prompt


def _chunks(
    body: dict[str, Any], model: str, scenario: Scenario, turn: Turn | None, cached: int = 0
) -> list[dict[str, Any]]:
    """The streamed chunks of the answer to one request (the last carries the finish)."""
    if scenario.block_reason is not None:
        ratings = [
            {"category": c, "probability": "HIGH", "blocked": True}
            for c in scenario.blocked_categories
        ]
        ratings.append({"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"})
        return [
            {
                "promptFeedback": {"blockReason": scenario.block_reason, "safetyRatings": ratings},
                "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4},
                "modelVersion": model,
            }
        ]
    hop = 0
    if token := body.get("continuationToken"):
        hop = int(base64.b64decode(token).decode().removeprefix("hop-"))
    parts_per_chunk: list[list[dict[str, Any]]] = []
    if scenario.thought is not None and hop == 0:
        parts_per_chunk.append([{"text": scenario.thought, "thought": True}])
    if scenario.function_calls:
        calls = [_call_part(c) for c in scenario.function_calls]
        if scenario.answer is not None:
            parts_per_chunk.append([{"text": scenario.answer}])
        if scenario.calls_in_one_chunk:
            parts_per_chunk.append(calls)
        else:
            parts_per_chunk.extend([c] for c in calls)
    else:
        words = _answer(body, scenario).split(" ")
        if scenario.continuation_hops:
            words = [f"{w}@{hop}" for w in words]
        parts_per_chunk.extend(
            [{"text": w if i == 0 and hop == 0 else f" {w}"}] for i, w in enumerate(words)
        )
        if scenario.text_signature is not None:
            parts_per_chunk[-1][-1]["thoughtSignature"] = scenario.text_signature
    prompt = _prompt_tokens(body, turn) + cached
    chunks: list[dict[str, Any]] = []
    for n, parts in enumerate(parts_per_chunk):
        usage: dict[str, Any] = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": n + 1,
            "totalTokenCount": prompt + n + 1,
        }
        for key, value in (
            ("cachedContentTokenCount", scenario.cached_tokens or cached or None),
            ("thoughtsTokenCount", scenario.thoughts_tokens),
            ("toolUsePromptTokenCount", scenario.tool_use_prompt_tokens),
        ):
            if value is not None:
                usage[key] = value
        chunks.append(
            {
                "candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
                "usageMetadata": usage,
                "modelVersion": f"{model}-001",
                "responseId": f"fake-{hop}",
            }
        )
    last = chunks[-1]["candidates"][0]
    if hop < scenario.continuation_hops:
        last["finishReason"] = "CONTINUATION"
        last["continuationToken"] = base64.b64encode(f"hop-{hop + 1}".encode()).decode()
    elif scenario.send_finish_reason:
        last["finishReason"] = scenario.finish_reason or "STOP"
        if scenario.blocked_categories:  # a candidate stopped by the safety filter
            last["safetyRatings"] = [
                {"category": c, "probability": "HIGH", "blocked": True}
                for c in scenario.blocked_categories
            ]
    return chunks


def _merge(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-streamed answer: the chunks' parts in one candidate, the last usage."""
    merged = dict(chunks[-1])
    if "candidates" in merged:
        candidate = dict(merged["candidates"][0])
        parts = [p for c in chunks for p in c["candidates"][0]["content"]["parts"]]
        candidate["content"] = {"role": "model", "parts": parts}
        merged["candidates"] = [candidate]
    return merged


def main() -> None:
    """Run the fake standalone; prints the bound port on stdout."""
    run_standalone(FakeGemini, Scenario, __doc__ or "")


if __name__ == "__main__":
    main()
