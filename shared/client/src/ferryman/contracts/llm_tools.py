"""The tool loop of a chat request: MCP tools offered to the model, how the LLM worker runs
them, and the events it streams while it does.

A chat request's `tools` may name MCP servers of the catalog (`McpToolset`) beside plain
function definitions. With `tool_execution.mode` `auto`, the LLM worker runs the model's
calls of those tools on the mcp_worker (through Kafka), feeds the results back to the model
and asks again, until the model answers without calling MCP tools, calls a plain function
(which comes back to the producer as a tool call, as without the loop) or `max_steps` is
reached. Every step's chunks carry its `step`; between steps the reply stream carries a
`tool.called` event per dispatched call and a `tool.result` event per result.

Any chat request is cancelled by the mcp_worker's cancel event (`CancelRequest` on the
control topic, keyed by the chat request's id).
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from ferryman.contracts.errors import ErrorInfo
from ferryman.contracts.mcp import ServerName

LLM_CHAT_PROGRESS: Final = "ferryman.llm.chat.progress"
LLM_CHAT_TOOL_CALLED: Final = "ferryman.llm.chat.tool.called"
LLM_CHAT_TOOL_RESULT: Final = "ferryman.llm.chat.tool.result"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class McpToolset(_Strict):
    """MCP tools of one catalog server, offered to the model as functions.

    The model sees each tool as a function named `<server>__<tool>` (characters outside
    `A-Za-z0-9_-` become `_`; a name past 64 characters is shortened with a hash), with the
    tool's description and input schema. Only the tools the request's tenant may use are
    offered: the same access rule the mcp_worker enforces.
    """

    type: Literal["mcp"]
    server: ServerName
    """The server's name in the mcp_worker's registry."""
    tools: list[str] = Field(default_factory=lambda: ["*"], min_length=1, max_length=256)
    """`fnmatch` patterns of the server's tool names (default: every tool)."""


class ToolExecution(_Strict):
    """Whether and how the LLM worker runs the model's MCP tool calls itself."""

    mode: Literal["none", "auto"] = "none"
    """`none`: every tool call comes back to the producer (no loop). `auto`: MCP tool calls
    run on the mcp_worker and their results go back to the model."""
    max_steps: int = Field(default=8, ge=1, le=64)
    """Model turns at most; the turn after the last allowed one is not made and the request
    completes with finish reason `max_steps`."""
    tool_timeout: float = Field(default=60.0, gt=0, le=3600)
    """Seconds one tool call may take (never past the request's deadline)."""
    parallel: bool = True
    """Run the calls the model makes in one turn concurrently (else one after another)."""
    auto_approve: list[str] | None = None
    """`server/tool` patterns (`fnmatch`) that run without confirmation; a call of any other
    MCP tool ends the loop like a plain function call (`finish_reason: tool_calls`), for the
    producer to confirm. None: every offered MCP tool runs."""
    on_tool_error: Literal["report", "fail"] = "report"
    """A tool that fails or times out: `report` it to the model as the tool's result (it may
    recover), or `fail` the request with the tool's error."""


class ChatProgress(_Strict):
    """The `data` of a `ferryman.llm.chat.progress` event: what a long request is doing."""

    stage: Literal["step_started", "waiting_tools", "waiting_quota", "resumed"]
    """`step_started`: a model turn begins; `waiting_tools`: the turn's tool calls were sent
    (each is announced by a `tool.called` event); `waiting_quota`: the request waits for a
    quota to free up; `resumed`: a rerun of the request continues from its recorded steps."""
    step: int = Field(ge=0)
    """The model turn (0 is the first)."""
    message: str | None = None
    sequence: int = Field(ge=0)
    """Counts 0, 1, 2… within one run of the request."""


class ToolCallStarted(_Strict):
    """The `data` of `ferryman.llm.chat.tool.called`: one tool call dispatched to the mcp_worker."""

    step: int = Field(ge=0)
    call_id: str
    """The model's id of the call (its `tool_call_id`)."""
    name: str
    """The function name the model called."""
    server: str
    tool: str
    arguments: str
    """The call's JSON arguments as the model wrote them."""
    tool_request_id: str
    """The `ce_id` of the tool-call request on the MCP request topic (derived from the chat
    request's id, the step and the call's index, so a rerun finds the result)."""


class ToolCallFinished(_Strict):
    """The `data` of `ferryman.llm.chat.tool.result`: a dispatched call's result, as the model
    gets it."""

    step: int = Field(ge=0)
    call_id: str
    server: str
    tool: str
    tool_request_id: str
    content: str
    """The text the model gets as the tool's result."""
    is_error: bool = False
    """The tool reported an error, failed or timed out (`error` says which, when not the tool)."""
    error: ErrorInfo | None = None
    """The failure, when the call did not complete (timeout, denied, unavailable, …)."""
    duration_ms: float = Field(ge=0)
    """From dispatch to result, as the LLM worker saw it."""
    cached: bool = False
    """The mcp_worker answered from its result cache."""
    replayed: bool = False
    """Found from an earlier run of this request (no new call was made)."""
