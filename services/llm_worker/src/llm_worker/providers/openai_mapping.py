"""Pure translation between Ferryman's request/stream shapes and OpenAI's wire shapes."""

from __future__ import annotations

import re
from typing import Any

from openai.types.chat import ChatCompletion
from openai.types.completion_usage import CompletionUsage

from ferryman.contracts import ChatRequest, FinishReason
from llm_worker.chat.streaming import Finish, StreamEvent, TextDelta, ToolCallFragment, UsageReport
from llm_worker.providers.tool_ids import neutral_tool_call_id

_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")
_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


_RETENTION = {"short": "in_memory", "long": "24h"}
"""`prompt_cache.retention` → OpenAI's `prompt_cache_retention`."""


def to_openai_params(request: ChatRequest, model: str, *, stream: bool) -> dict[str, Any]:
    """Return the keyword arguments of `chat.completions.create` for `request`.

    Prompt-cache breakpoints have no OpenAI form: they are left out (OpenAI caches long
    prefixes by itself). `prompt_cache.key` and `retention` become `prompt_cache_key` and
    `prompt_cache_retention`.
    """
    params: dict[str, Any] = {
        "model": model,
        "messages": [
            _message(m.model_dump(exclude_none=True, by_alias=True)) for m in request.messages
        ],
        "stream": stream,
    }
    if stream:
        params["stream_options"] = {"include_usage": True}
    if tools := request.function_tools():
        params["tools"] = [t.model_dump(exclude_none=True, by_alias=True) for t in tools]
    if request.tool_choice is not None:
        choice = request.tool_choice
        params["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump()
    if request.response_format is not None:
        params["response_format"] = request.response_format.model_dump(
            exclude_none=True, by_alias=True
        )
    for name in ("temperature", "top_p", "stop", "seed"):
        value = getattr(request, name)
        if value is not None:
            params[name] = value
    if request.max_tokens is not None:
        # Reasoning models reject `max_tokens`; many OpenAI-compatible servers only know it.
        limit_name = "max_completion_tokens" if _REASONING_MODEL.match(model) else "max_tokens"
        params[limit_name] = request.max_tokens
    if request.metadata and (user := request.metadata.get("user_id")):
        params["user"] = user
    if (options := request.prompt_cache) is not None:
        if options.key is not None:
            params["prompt_cache_key"] = options.key
        if options.retention is not None:
            params["prompt_cache_retention"] = _RETENTION[options.retention]
    return params


def _message(message: dict[str, Any]) -> dict[str, Any]:
    # A dump carries Ferryman's breakpoints; OpenAI refuses unknown keys with a 400.
    message.pop("cache_control", None)
    if isinstance(content := message.get("content"), list):
        for part in content:
            part.pop("cache_control", None)
    if "tool_call_id" in message:
        message["tool_call_id"] = neutral_tool_call_id(message["tool_call_id"])
    for call in message.get("tool_calls") or ():
        call["id"] = neutral_tool_call_id(call["id"])
    return message


def finish_reason(raw: str | None) -> FinishReason:
    """Map OpenAI's finish reason to Ferryman's set (unknown reasons count as `stop`)."""
    return _FINISH_REASONS.get(raw or "stop", "stop")


def _usage(usage: CompletionUsage) -> UsageReport:
    return usage_report(usage.model_dump())


def usage_report(usage: dict[str, Any]) -> UsageReport:
    """Map OpenAI's `usage` object (cached and reasoning tokens included when reported)."""
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return UsageReport(
        input_tokens=usage.get("prompt_tokens") or 0,
        output_tokens=usage.get("completion_tokens") or 0,
        cached_input_tokens=prompt_details.get("cached_tokens"),
        reasoning_tokens=completion_details.get("reasoning_tokens"),
    )


class ChunkMapper:
    """Maps streamed chat-completion chunks to stream events.

    Keeps per-call state so `id` and `name` are emitted once per tool call even
    when an OpenAI-compatible server repeats them in every fragment.
    """

    def __init__(self) -> None:
        self._announced: set[int] = set()
        self._filtered: set[str] = set()
        self._finish: str | None = None
        self._model: str | None = None
        self._usage_seen = False

    def events(self, chunk: Any) -> list[StreamEvent]:
        """Return the events carried by one streamed chunk, decoded as plain JSON (choice 0 only).

        Plain dicts rather than `ChatCompletionChunk`: building the SDK's model
        for every token was the worker's largest CPU cost.
        """
        out: list[StreamEvent] = []
        if not isinstance(chunk, dict):
            return out
        if model := chunk.get("model"):
            self._model = model
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if content := delta.get("content"):
                out.append(TextDelta(text=content))
            for call in delta.get("tool_calls") or ():
                index = call.get("index", 0)
                first = index not in self._announced
                self._announced.add(index)
                function = call.get("function") or {}
                arguments = function.get("arguments")
                if first or arguments:
                    out.append(
                        ToolCallFragment(
                            index=index,
                            id=call.get("id") if first else None,
                            name=function.get("name") if first else None,
                            arguments=arguments or None,
                        )
                    )
            if (reason := choice.get("finish_reason")) is not None:
                self._finish = reason
            if results := choice.get("content_filter_results"):  # Azure, per chunk
                self._filtered.update(filtered_categories(results))
        if (usage := chunk.get("usage")) is not None:
            self._usage_seen = True
            out.append(usage_report(usage))
        return out

    @property
    def complete(self) -> bool:
        """Whether the answer finished and its usage came: nothing else is worth waiting for
        (a server that never sends `[DONE]` must not hold the request until a timeout)."""
        return self._finish is not None and self._usage_seen

    def finish(self) -> Finish | None:
        """Return the `Finish` event once the stream ended, if the provider finished it."""
        if self._finish is None:
            return None
        reason = finish_reason(self._finish)
        categories = (
            sorted(self._filtered) if reason == "content_filter" and self._filtered else None
        )
        return Finish(reason=reason, model=self._model, filtered_categories=categories)


def completion_events(completion: ChatCompletion) -> list[StreamEvent]:
    """Return the events equivalent to a non-streamed completion (to fold like a stream)."""
    out: list[StreamEvent] = []
    choice = next((c for c in completion.choices if c.index == 0), None)
    if choice is not None:
        message = choice.message
        if message.content:
            out.append(TextDelta(text=message.content))
        for index, call in enumerate(message.tool_calls or ()):
            function = getattr(call, "function", None)
            out.append(
                ToolCallFragment(
                    index=index,
                    id=call.id,
                    name=function.name if function is not None else None,
                    arguments=function.arguments if function is not None else None,
                )
            )
    if completion.usage is not None:
        out.append(_usage(completion.usage))
    if choice is not None and choice.finish_reason is not None:
        out.append(Finish(reason=finish_reason(choice.finish_reason), model=completion.model))
    return out


def filtered_categories(results: object) -> list[str]:
    """Flagged categories of an Azure `content_filter_results` / `content_filter_result` object,
    as `category=severity` (e.g. `{"hate": {"filtered": true, "severity": "high"}}`)."""
    if not isinstance(results, dict):
        return []
    found: list[str] = []
    for category, verdict in results.items():
        if isinstance(verdict, dict) and verdict.get("filtered"):
            severity = verdict.get("severity")
            found.append(f"{category}={severity}" if severity else str(category))
    return sorted(found)
