"""Pure translation between Ferryman's request/stream shapes and Anthropic's Messages API.

Requests: chat-completions messages become Messages API `system` + `messages`
(tool calls as `tool_use` blocks, tool results as `tool_result` blocks in a user
turn). Streams: the raw `message_start … message_stop` events become Ferryman's
`TextDelta`, `ToolCallFragment`, `UsageReport` and `Finish`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from anthropic.types import RawMessageStreamEvent

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError, FinishReason
from ferryman.contracts.llm import (
    AssistantMessage,
    DataRefPart,
    FunctionDefinition,
    ImagePart,
    JsonObjectFormat,
    JsonSchemaFormat,
    NamedToolChoice,
    SystemMessage,
    TextPart,
    ToolMessage,
    UserMessage,
)
from llm_worker.chat.streaming import Finish, StreamEvent, TextDelta, ToolCallFragment, UsageReport
from llm_worker.providers.anthropic_cache import WireMarkers, put_marker, system_param, text_block
from llm_worker.providers.tool_ids import neutral_tool_call_id

PROVIDER = "anthropic"

SamplingPolicy = Literal["reject", "drop", "send"]
"""What to do with `temperature` / `top_p`.

The `anthropic` SDK (≥ 1.0) has no sampling parameters, and the API version it
sends (`anthropic-version: 2026-10-21`) rejects `temperature`, `top_p` and
`top_k` with a 400 at any value. `reject` fails such requests up front with
`invalid_request` naming the parameter; `drop` leaves them out; `send` passes
them in `extra_body` (for Anthropic-compatible servers that still take them).
"""

_FINISH_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_DATA_URL = re.compile(
    r"^data:(?P<media>[^;,]+)(?P<params>(?:;[^;,]*)*?);base64,(?P<data>.*)$", re.S
)


def _invalid(message: str) -> FerrymanError:
    return FerrymanError(ErrorCode.INVALID_REQUEST, message, upstream=PROVIDER)


def to_anthropic_params(
    request: ChatRequest,
    model: str,
    *,
    default_max_tokens: int,
    sampling: SamplingPolicy = "reject",
    thinking_budget: int | None = None,
) -> dict[str, Any]:
    """Return the keyword arguments of `messages.create` for `request` (without `stream`).

    Prompt-cache breakpoints become `cache_control` on the blocks they end (the last tool,
    system text blocks, message blocks); `prompt_cache.key` has no Anthropic form.

    Raises:
        FerrymanError: `invalid_request` when the request cannot be expressed for
            Anthropic (invalid tool-call arguments, an unusable image URL,
            `response_format` `json_object`, sampling parameters under `reject`).
    """
    options = request.prompt_cache
    wire = WireMarkers(options.retention if options is not None else None)
    system, messages = _messages(request, wire)
    params: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens or default_max_tokens,
        "messages": messages,
    }
    if system:
        params["system"] = system
    if thinking_budget is not None:
        # Extended thinking; its blocks are not streamed to producers (only its token count).
        if params["max_tokens"] <= thinking_budget:
            limit = params["max_tokens"]
            raise _invalid(f"max_tokens {limit} must exceed the thinking budget {thinking_budget}")
        params["thinking"] = {"type": "enabled", "budget_tokens": thinking_budget}
    if tools := request.function_tools():
        params["tools"] = [_tool(tool.function) for tool in tools]
        put_marker(params["tools"], wire(options.tools if options is not None else None))
        if request.tool_choice is not None:
            params["tool_choice"] = _tool_choice(request.tool_choice)
    if request.stop is not None:
        params["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else request.stop
    if request.metadata and (user_id := request.metadata.get("user_id")):
        params["metadata"] = {"user_id": user_id}
    if isinstance(request.response_format, JsonSchemaFormat):
        # Structured outputs: `output_config.format` (non-beta in anthropic 2.x). The
        # schema goes as given; the name/description/strict of the spec have no slot.
        schema = request.response_format.json_schema.json_schema
        params["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    elif isinstance(request.response_format, JsonObjectFormat):
        raise _invalid("response_format json_object is not supported by anthropic")
    sampled = {
        name: value
        for name in ("temperature", "top_p")
        if (value := getattr(request, name)) is not None
    }
    if sampled and sampling == "reject":
        names = " and ".join(sampled)
        verb = "is" if len(sampled) == 1 else "are"
        raise _invalid(
            f"{names} {verb} not supported by anthropic (its API rejects sampling parameters)"
        )
    if sampled and sampling == "send":
        params["extra_body"] = sampled
    return params


def _messages(
    request: ChatRequest, wire: WireMarkers
) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    """Return the `system` parameter and the Messages API turns."""
    system: list[SystemMessage] = []
    out: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []

    def flush_results() -> None:
        if results:
            out.append({"role": "user", "content": list(results)})
            results.clear()

    for message in request.messages:
        if isinstance(message, ToolMessage):
            results.append(_tool_result(message, wire))
            continue
        flush_results()
        if isinstance(message, SystemMessage):
            system.append(message)
        elif isinstance(message, UserMessage):
            out.append({"role": "user", "content": _user_content(message, wire)})
        elif isinstance(message, AssistantMessage):
            out.append({"role": "assistant", "content": _assistant_content(message, wire)})
    flush_results()
    return system_param(system, wire), out


def _user_content(message: UserMessage, wire: WireMarkers) -> str | list[dict[str, Any]]:
    content, marker = message.content, wire(message.cache_control)
    if isinstance(content, str):
        if marker is None:
            return content
        return [{"type": "text", "text": content, "cache_control": marker}]
    blocks = [_user_part(part, wire) for part in content]
    put_marker(blocks, marker)
    return blocks


def _user_part(part: TextPart | ImagePart | DataRefPart, wire: WireMarkers) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return text_block(part, wire)
    if isinstance(part, DataRefPart):  # the chat service resolves them before any call
        raise _invalid("a dataref part reached the provider unresolved")
    return _image(part)


def _image(part: ImagePart) -> dict[str, Any]:
    url = part.image_url.url
    if url.startswith("data:"):
        match = _DATA_URL.match(url)
        if match is None:
            raise _invalid("image data: URLs must be base64-encoded (data:<type>;base64,...)")
        source = {
            "type": "base64",
            "media_type": match["media"].strip().lower(),
            "data": match["data"],
        }
        return {"type": "image", "source": source}
    if url.lower().startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _invalid("image URLs must be https: or data: URLs")


def _assistant_content(message: AssistantMessage, wire: WireMarkers) -> str | list[dict[str, Any]]:
    content, marker = message.content, wire(message.cache_control)
    if not message.tool_calls and isinstance(content, str) and marker is None:
        return content
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif content is not None:
        for part in content:
            if part.text:
                blocks.append(text_block(part, wire))
            else:
                put_marker(blocks, wire(part.cache_control))
    for call in message.tool_calls or ():
        blocks.append(
            {
                "type": "tool_use",
                "id": neutral_tool_call_id(call.id),
                "name": call.function.name,
                "input": _tool_input(call.function.name, call.function.arguments),
            }
        )
    put_marker(blocks, marker)
    return blocks


def _tool_input(name: str, arguments: str) -> dict[str, Any]:
    """Parse a tool call's JSON arguments; blank arguments mean no arguments (`{}`)."""
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise _invalid(f"tool call {name!r} has arguments that are not valid JSON") from exc
    if not isinstance(value, dict):
        raise _invalid(f"tool call {name!r} has arguments that are not a JSON object")
    return value


def _tool_result(message: ToolMessage, wire: WireMarkers) -> dict[str, Any]:
    content = message.content
    result: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": neutral_tool_call_id(message.tool_call_id),
        "content": content
        if isinstance(content, str)
        else [text_block(part, wire) for part in content],
    }
    if (marker := wire(message.cache_control)) is not None:
        result["cache_control"] = marker
    return result


def _tool(function: FunctionDefinition) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": function.name}
    if function.description is not None:
        tool["description"] = function.description
    tool["input_schema"] = function.parameters or {"type": "object"}
    if function.strict is not None:
        tool["strict"] = function.strict
    return tool


def _tool_choice(choice: str | NamedToolChoice) -> dict[str, Any]:
    if isinstance(choice, NamedToolChoice):
        return {"type": "tool", "name": choice.function.name}
    return {"type": {"required": "any"}.get(choice, choice)}


def finish_reason(raw: str | None) -> FinishReason:
    """Map Anthropic's `stop_reason` to Ferryman's set (unknown reasons count as `stop`)."""
    return _FINISH_REASONS.get(raw or "end_turn", "stop")


@dataclass
class _ToolBlock:
    index: int
    """Ferryman's tool-call index (0, 1, 2… over tool calls only)."""
    initial_input: object
    has_arguments: bool = False
    closed: bool = False


class EventMapper:
    """Maps raw Messages API stream events to Ferryman stream events.

    Tool calls get Ferryman's own index, counting tool calls only (0, 1, 2…):
    Anthropic's content-block `index` also counts text (and thinking) blocks.
    A tool call that streams no `input_json_delta` still gets its arguments:
    the JSON of the block's initial `input`, `{}` when empty.
    """

    def __init__(self) -> None:
        self._tools: dict[int, _ToolBlock] = {}
        self._model: str | None = None
        self._input_tokens = 0
        self._cache_read: int | None = None
        self._cache_creation: int | None = None
        self._cache_write_long: int | None = None
        self._output_tokens = 0
        self._reasoning_tokens: int | None = None
        self._stop_reason: str | None = None
        self._finished = False

    @property
    def finished(self) -> bool:
        """Whether `UsageReport` and `Finish` were already emitted."""
        return self._finished

    def events(self, event: RawMessageStreamEvent) -> list[StreamEvent]:
        """Return the events carried by one raw stream event.

        Raises:
            FerrymanError: `unavailable` (retryable) when the event lacks fields its type requires.
        """
        try:
            return self._events(event)
        except (AttributeError, KeyError, TypeError) as exc:
            raise FerrymanError(
                ErrorCode.UNAVAILABLE,
                f"Anthropic sent a malformed {getattr(event, 'type', 'unknown')!s} event",
                retryable=True,
                upstream=PROVIDER,
            ) from exc

    def _events(self, event: RawMessageStreamEvent) -> list[StreamEvent]:
        if self._finished:
            return []
        # Dispatch on the wire `type`: the SDK builds unknown event types as some
        # member of its union with the unknown `type` kept, so isinstance would lie.
        if event.type == "content_block_delta":
            delta = event.delta
            if delta.type == "text_delta":
                return [TextDelta(text=delta.text)] if delta.text else []
            if delta.type == "input_json_delta":
                tool = self._tools.get(event.index)
                if tool is None or not delta.partial_json:
                    return []
                tool.has_arguments = True
                return [ToolCallFragment(index=tool.index, arguments=delta.partial_json)]
            return []  # thinking, signature and citation deltas carry no answer text
        if event.type == "content_block_start":
            block = event.content_block
            if block.type == "tool_use":
                tool = _ToolBlock(index=len(self._tools), initial_input=block.input)
                self._tools[event.index] = tool
                return [ToolCallFragment(index=tool.index, id=block.id, name=block.name)]
            if block.type == "text" and block.text:
                return [TextDelta(text=block.text)]
            return []
        if event.type == "content_block_stop":
            tool = self._tools.get(event.index)
            return [] if tool is None else self._close(tool)
        if event.type == "message_start":
            message = event.message
            self._model = message.model or self._model
            self._take_usage(message.usage)
            return []
        if event.type == "message_delta":
            if event.delta.stop_reason is not None:
                self._stop_reason = event.delta.stop_reason
            self._take_usage(event.usage)
            return []
        if event.type == "message_stop":
            return self._finish()
        return []

    def _close(self, tool: _ToolBlock) -> list[StreamEvent]:
        if tool.closed:
            return []
        tool.closed = True
        if tool.has_arguments:
            return []
        initial = tool.initial_input
        arguments = json.dumps(initial) if isinstance(initial, dict) and initial else "{}"
        return [ToolCallFragment(index=tool.index, arguments=arguments)]

    def _take_usage(self, usage: Any) -> None:
        """Keep the latest counts (`message_delta` usage is cumulative)."""
        if usage is None:
            return
        if (value := getattr(usage, "input_tokens", None)) is not None:
            self._input_tokens = value
        if (value := getattr(usage, "output_tokens", None)) is not None:
            self._output_tokens = value
        if (value := getattr(usage, "cache_read_input_tokens", None)) is not None:
            self._cache_read = value
        if (value := getattr(usage, "cache_creation_input_tokens", None)) is not None:
            self._cache_creation = value
        split = getattr(usage, "cache_creation", None)
        if split is not None and (value := getattr(split, "ephemeral_1h_input_tokens", None)):
            self._cache_write_long = value
        details = getattr(usage, "output_tokens_details", None)
        if details is not None and (value := getattr(details, "thinking_tokens", None)) is not None:
            self._reasoning_tokens = value

    def usage(self) -> UsageReport:
        """Usage so far, with input counted as OpenAI does.

        Anthropic's `input_tokens` excludes cache reads and writes; Ferryman's
        `input_tokens` is all input (cached tokens are a subset), so they are added.
        Writes are `cache_write_tokens`, the 1-hour part of them `cache_write_long_tokens`.
        """
        total = self._input_tokens + (self._cache_read or 0) + (self._cache_creation or 0)
        return UsageReport(
            input_tokens=total,
            output_tokens=self._output_tokens,
            cached_input_tokens=self._cache_read,
            cache_write_tokens=self._cache_creation,
            cache_write_long_tokens=self._cache_write_long,
            reasoning_tokens=self._reasoning_tokens,
        )

    def _finish(self) -> list[StreamEvent]:
        if self._stop_reason is None:
            return []  # message_stop without message_delta: not a finished answer
        self._finished = True
        out: list[StreamEvent] = []
        for tool in self._tools.values():
            out.extend(self._close(tool))
        out.append(self.usage())
        out.append(Finish(reason=finish_reason(self._stop_reason), model=self._model))
        return out

    def finish(self) -> list[StreamEvent]:
        """Return the closing events once the stream ended, if the provider finished the answer.

        Empty when the closing events were already emitted at `message_stop`, and
        when the stream carried no `stop_reason` (a cut stream is not an answer).
        """
        if self._finished:
            return []
        return self._finish()
