"""LLM request and result payloads (the `data` of Ferryman's LLM CloudEvents).

The request is chat-completions shaped, the lingua franca producers already
know. Unknown fields are rejected so that typos surface as validation errors
instead of being silently ignored.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal, cast

from pydantic import (
    AliasChoices,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from ferryman.contracts.errors import ErrorCode, ErrorInfo
from ferryman.contracts.llm_cache import CacheControl, PromptCache, ResponseCacheOptions
from ferryman.contracts.llm_tools import McpToolset, ToolExecution
from ferryman.contracts.storage import ObjectRef, parse_dataref

LLM_CHAT_REQUESTED: Final = "ferryman.llm.chat.requested"
LLM_CHAT_CHUNK: Final = "ferryman.llm.chat.chunk"
LLM_CHAT_COMPLETED: Final = "ferryman.llm.chat.completed"
LLM_CHAT_FAILED: Final = "ferryman.llm.chat.failed"
LLM_CHAT_RESTARTED: Final = "ferryman.llm.chat.restarted"

DEFAULT_LLM_REQUEST_TOPIC: Final = "llm.requests"
DEFAULT_LLM_REPLY_TOPIC: Final = "llm.results"

_SURROGATE = re.compile("[\ud800-\udfff]")

MAX_CACHE_BREAKPOINTS: Final = 4
"""Prompt-cache breakpoints one request may carry (Anthropic's limit)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextPart(_Strict):
    """A text content part."""

    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    """A prompt-cache breakpoint after this part (docs/caching.md)."""


class ImageURL(_Strict):
    """An image reference: an `https:` URL or a `data:` URL."""

    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    """An image content part."""

    type: Literal["image_url"]
    image_url: ImageURL


class DataRefPart(_Strict):
    """A content part naming an object of the tenant's storage (a `dataref`, the
    claim-check pattern): the LLM worker asks the storage_worker for it, in the request's
    tenant, and replaces the part before any provider sees the request.

    `as` says what the model gets: `text` (the object's text: text objects as they are, other
    documents such as PDF or HTML through the storage pipeline that extracts text; cut at the
    worker's limit, and said so), `image` (the image, as a presigned URL or inline data,
    whichever the providers that may serve the request take), or `auto` (an image for
    `image/*` objects, text otherwise). Serialized as `{"type": "dataref", "dataref":
    {"key": ..., "backend": ...}, "as": "auto"}`; `dataref` may also be given as the
    `ferryman-storage://<backend>/<key>` reference object events carry (their `dataref`
    extension).
    """

    type: Literal["dataref"]
    dataref: ObjectRef
    as_: Literal["auto", "text", "image"] = Field(
        default="auto", validation_alias=AliasChoices("as", "as_"), serialization_alias="as"
    )

    @field_validator("dataref", mode="before")
    @classmethod
    def _from_reference(cls, value: object) -> object:
        return parse_dataref(value) if isinstance(value, str) else value


ContentPart = Annotated[TextPart | ImagePart | DataRefPart, Field(discriminator="type")]


class FunctionCall(_Strict):
    """The function a tool call invokes; `arguments` is a JSON string."""

    name: str = Field(min_length=1)
    arguments: str


class ToolCall(_Strict):
    """A tool call made by the assistant in an earlier turn."""

    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Strict):
    """Instructions for the model."""

    role: Literal["system"]
    content: str | list[TextPart]
    name: str | None = None
    cache_control: CacheControl | None = None
    """A prompt-cache breakpoint after this message (docs/caching.md)."""


class UserMessage(_Strict):
    """A user turn: text, or text, image and dataref parts."""

    role: Literal["user"]
    content: str | list[ContentPart]
    name: str | None = None
    cache_control: CacheControl | None = None
    """A prompt-cache breakpoint after this message (docs/caching.md)."""


class AssistantMessage(_Strict):
    """An earlier assistant turn: text, tool calls, or both."""

    role: Literal["assistant"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    name: str | None = None
    cache_control: CacheControl | None = None
    """A prompt-cache breakpoint after this message (docs/caching.md)."""

    @model_validator(mode="after")
    def _has_content_or_tool_calls(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class ToolMessage(_Strict):
    """The result of a tool call, answering the call with id `tool_call_id`."""

    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str = Field(min_length=1)
    cache_control: CacheControl | None = None
    """A prompt-cache breakpoint after this message (docs/caching.md)."""


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class FunctionDefinition(_Strict):
    """A function the model may call; `parameters` is a JSON Schema object."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    """A tool offered to the model."""

    type: Literal["function"]
    function: FunctionDefinition


OfferedTool = Annotated[Tool | McpToolset, Field(discriminator="type")]
"""A function definition, or the MCP tools of a catalog server."""


class NamedFunction(_Strict):
    """Names the function a forced tool choice must call."""

    name: str = Field(min_length=1)


class NamedToolChoice(_Strict):
    """Forces the model to call one named function."""

    type: Literal["function"]
    function: NamedFunction


class TextFormat(_Strict):
    """Plain text output (the default)."""

    type: Literal["text"]


class JsonObjectFormat(_Strict):
    """JSON mode: the output is some JSON object."""

    type: Literal["json_object"]


class JsonSchemaSpec(_Strict):
    """A named JSON Schema the output must follow."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    json_schema: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class JsonSchemaFormat(_Strict):
    """Structured output following `json_schema`."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


class ChatRequest(_Strict):
    """The `data` of a `ferryman.llm.chat.requested` event."""

    model: str = Field(min_length=1)
    """A configured alias, or `provider/model` (for example `openai/gpt-4o-mini`, `mock/echo`)."""
    messages: list[Message] = Field(min_length=1)
    tools: list[OfferedTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = None
    """Best-effort deterministic sampling, where the provider supports it."""
    stream: bool = True
    """When false, only the terminal event is published (no chunks)."""
    metadata: dict[str, str] | None = None
    """Free-form tags; `user_id` is passed to providers that take an end-user id."""
    tool_execution: ToolExecution | None = None
    """Whether the worker runs the model's MCP tool calls itself (default: it does not)."""
    prompt_cache: PromptCache | None = None
    """Provider prompt caching: key, retention, a breakpoint after the tools, auto mode."""
    response_cache: ResponseCacheOptions | None = None
    """The worker's response cache for this request (default: as the route says)."""

    def cache_breakpoints(self) -> list[CacheControl]:
        """Every prompt-cache breakpoint, in the order providers process the prompt: after
        the tools, then the system messages', then the other messages' (a message's parts'
        markers before its own)."""
        found: list[CacheControl] = []
        if self.prompt_cache is not None and self.prompt_cache.tools is not None:
            found.append(self.prompt_cache.tools)
        system = [m for m in self.messages if isinstance(m, SystemMessage)]
        others = [m for m in self.messages if not isinstance(m, SystemMessage)]
        for message in [*system, *others]:
            if not isinstance(message.content, str | None):
                found.extend(
                    part.cache_control
                    for part in message.content
                    if isinstance(part, TextPart) and part.cache_control is not None
                )
            if message.cache_control is not None:
                found.append(message.cache_control)
        return found

    def function_tools(self) -> list[Tool]:
        """The plain function definitions among `tools` (MCP toolsets are resolved by the worker
        into functions before a provider sees the request)."""
        return [tool for tool in self.tools or () if isinstance(tool, Tool)]

    def mcp_toolsets(self) -> list[McpToolset]:
        """The MCP toolsets among `tools`."""
        return [tool for tool in self.tools or () if isinstance(tool, McpToolset)]

    def datarefs(self) -> list[DataRefPart]:
        """The dataref parts of the user messages, in order."""
        return [
            part
            for message in self.messages
            if isinstance(message, UserMessage) and not isinstance(message.content, str)
            for part in message.content
            if isinstance(part, DataRefPart)
        ]

    def runs_tools(self) -> bool:
        """Whether the worker runs MCP tool calls (`tool_execution.mode` is `auto`)."""
        return self.tool_execution is not None and self.tool_execution.mode == "auto"

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data: Any) -> Any:
        # JSON may escape half a UTF-16 pair (`"\ud800"`): no provider can be sent it, and no
        # reply could carry its echo; refuse it before any work.
        if (where := _lone_surrogate(data, "")) is not None:
            where = where.encode("utf-8", "backslashreplace").decode()  # it may name a bad key
            raise ValueError(f"{where or 'the request'} holds a lone UTF-16 surrogate")
        return data

    @model_validator(mode="after")
    def _check_consistency(self) -> ChatRequest:
        if isinstance(self.stop, list) and not 1 <= len(self.stop) <= 4:
            raise ValueError("stop takes 1 to 4 sequences")
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise ValueError("tool_choice requires tools")
        if self.runs_tools() and not self.mcp_toolsets():
            raise ValueError("tool_execution auto needs MCP tools ({'type': 'mcp', ...})")
        names = [tool.function.name for tool in self.function_tools()]
        if len(set(names)) != len(names):
            raise ValueError("function tool names must be unique")
        servers = [toolset.server for toolset in self.mcp_toolsets()]
        if len(set(servers)) != len(servers):
            raise ValueError("each MCP server may be named once in tools")
        choice = self.tool_choice
        # A named choice may name an MCP tool's function, known only once the catalog is read.
        if (
            isinstance(choice, NamedToolChoice)
            and not servers
            and choice.function.name not in names
        ):
            raise ValueError(f"tool_choice names unknown tool {choice.function.name!r}")
        self._check_breakpoints()
        return self

    def _check_breakpoints(self) -> None:
        breakpoints = self.cache_breakpoints()
        if len(breakpoints) > MAX_CACHE_BREAKPOINTS:
            raise ValueError(
                f"at most {MAX_CACHE_BREAKPOINTS} cache_control breakpoints are allowed"
                f" (tools, messages and parts together), got {len(breakpoints)}"
            )
        retention = self.prompt_cache.retention if self.prompt_cache is not None else None
        ttls = [marker.effective_ttl(retention) for marker in breakpoints]
        if "5m" in ttls and "1h" in ttls[ttls.index("5m") :]:
            raise ValueError(
                "a 1h cache_control breakpoint may not follow a 5m one (order: tools,"
                " system messages, then the other messages)"
            )


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The path of the first string (key or value) in `value` holding a lone surrogate."""
    if isinstance(value, str):
        return path if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in cast(dict[Any, Any], value).items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _SURROGATE.search(key):
                return where
            if (found := _lone_surrogate(item, where)) is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(cast(list[Any], value)):
            if (found := _lone_surrogate(item, f"{path}[{index}]")) is not None:
                return found
    elif isinstance(value, BaseModel):
        return _lone_surrogate(value.model_dump(), path)
    return None


class ToolCallDelta(_Strict):
    """A fragment of one streamed tool call.

    `index` is stable per call; `id` and `name` come with the first fragment;
    the `arguments` fragments of one call concatenate to its JSON arguments.
    """

    index: int = Field(ge=0)
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


class ChunkDelta(_Strict):
    """What one chunk adds to the answer."""

    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunk(_Strict):
    """The `data` of a `ferryman.llm.chat.chunk` event.

    `index` counts 0, 1, 2… with no gaps within one `attempt`. A stream that failed after
    chunks were published may be restarted on another deployment: a
    `ferryman.llm.chat.restarted` event then announces `attempt` + 1, whose chunks count
    from 0 again, and consumers discard the chunks of earlier attempts.
    """

    index: int = Field(ge=0)
    delta: ChunkDelta
    attempt: int = Field(default=1, ge=1)
    """Which streamed answer this chunk belongs to (1 unless the stream was restarted)."""
    step: int | None = Field(default=None, ge=0)
    """In a tool loop: the model turn the chunk belongs to (indexes count from 0 per step)."""


class ChatRestarted(_Strict):
    """The `data` of a `ferryman.llm.chat.restarted` event.

    The stream of `attempt - 1` failed after some of its chunks were published; they must
    be discarded. The chunks that follow carry `attempt` and count from index 0.
    """

    attempt: int = Field(ge=2)
    """The attempt that starts now."""
    discarded_chunks: int = Field(ge=0)
    """How many chunks the failed attempt had published."""
    reason: ErrorInfo
    """Why the previous attempt failed."""
    deployment: str
    """The deployment that serves the new attempt."""
    step: int | None = Field(default=None, ge=0)
    """In a tool loop: the model turn restarted (the chunks of earlier steps stand)."""


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "max_steps"]
"""`max_steps`: the tool loop reached `tool_execution.max_steps` with tool calls pending."""


class CompletedToolCall(_Strict):
    """A finished tool call; `arguments` is its JSON arguments string."""

    id: str
    name: str
    arguments: str


class Usage(_Strict):
    """Tokens spent by the request, as reported by the provider."""

    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    cached_input_tokens: int | None = Field(default=None, ge=0)
    """Cache reads: input tokens served from the provider's prompt cache, when reported
    (part of `input_tokens`)."""
    cache_write_tokens: int | None = Field(default=None, ge=0)
    """Cache writes: input tokens the provider stored in its prompt cache (Anthropic's
    `cache_creation_input_tokens`; Gemini: a cached content this call created), when
    reported (part of `input_tokens`)."""
    cache_write_long_tokens: int | None = Field(default=None, ge=0)
    """The part of `cache_write_tokens` written with the long (1h) retention."""
    reasoning_tokens: int | None = Field(default=None, ge=0)
    """Output tokens spent on reasoning/thinking, when reported."""


class Latency(_Strict):
    """Milliseconds from the start of work to the first token and to the end."""

    first_token: float | None = Field(default=None, ge=0)
    total: float = Field(ge=0)


class AttemptInfo(_Strict):
    """One call to a deployment made for a request."""

    deployment: str
    """The routed deployment name, or `provider/model`."""
    outcome: Literal["completed", "failed"]
    error_code: ErrorCode | None = None
    duration_ms: float = Field(ge=0)


class StepToolResult(_Strict):
    """How one tool call of a step ended (its content is in the `tool.result` event)."""

    call_id: str
    server: str
    tool: str
    is_error: bool
    error_code: ErrorCode | str | None = Field(default=None, union_mode="left_to_right")
    """Why the call did not complete (None: it completed, maybe with the tool's own error)."""
    duration_ms: float = Field(ge=0)
    cached: bool = False
    replayed: bool = False
    content: str | None = None
    """The result as the model got it: only in the last step, when it ends the loop with
    `finish_reason: tool_calls` (the producer continues the conversation from there)."""


class StepInfo(_Strict):
    """One model turn of a tool loop, and the tools it ran."""

    step: int = Field(ge=0)
    content: str
    tool_calls: list[CompletedToolCall]
    finish_reason: FinishReason
    usage: Usage
    deployment: str | None = None
    tool_results: list[StepToolResult] = Field(default_factory=list[StepToolResult])
    replayed: bool = False
    """Taken from an earlier run of this request (the model was not asked again)."""


class ChatCompleted(_Strict):
    """The `data` of a `ferryman.llm.chat.completed` event.

    `content` equals the concatenation of the chunks' content deltas (in a tool loop, of the
    last step's chunks).
    """

    content: str
    tool_calls: list[CompletedToolCall]
    finish_reason: FinishReason
    usage: Usage
    provider: str
    model: str
    chunk_count: int = Field(ge=0)
    latency_ms: Latency
    deployment: str | None = None
    """The deployment that served (a routed deployment name, or `provider/model`)."""
    attempts: list[AttemptInfo] | None = None
    """Every call made for this request, in order (retries and failovers included)."""
    filtered_categories: list[str] | None = None
    """With `finish_reason` `content_filter`: the categories the provider's filter flagged
    (e.g. `hate=high`), when it says."""
    stream_attempt: int | None = None
    """With a restarted stream: the attempt whose chunks make up this answer."""
    degraded: bool | None = None
    """True when the route's degraded fallback served because nothing else could."""
    steps: list[StepInfo] | None = None
    """In a tool loop: every model turn in order. `content`, `tool_calls` and
    `finish_reason` are the last turn's; `usage` sums the turns'."""
    cached: bool | None = None
    """True when the answer came from the worker's response cache (`usage` is then zero)."""
    original_usage: Usage | None = None
    """With `cached`: the usage of the call that produced the stored answer."""
    cached_at: AwareDatetime | None = None
    """With `cached`: when the answer was stored."""


class ChatFailed(_Strict):
    """The `data` of a `ferryman.llm.chat.failed` event."""

    error: ErrorInfo
