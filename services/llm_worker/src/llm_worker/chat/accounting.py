"""What one chat request used, gathered while it runs and sent as one usage event when it
ends (completed, failed or cancelled): tokens, the model that answered, and for a tool loop
its steps and the tools it called."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from ferryman.contracts import ChatRequest
from ferryman.contracts.llm import Usage
from ferryman.contracts.usage import UsageEvent

if TYPE_CHECKING:
    from llm_worker.chat.job import ChatJob

SERVICE = "llm_worker"

CHAT = "chat"
TOOL_LOOP = "tool_loop"
"""The `operation` of requests whose MCP tool calls the worker runs itself."""

_MAX_FIELD = 256
"""Characters of a usage event's free-form fields (longer values are cut, not refused)."""


class UsageSink(Protocol):
    """Where usage events go (the kit's `UsageRecorder`)."""

    def record(self, event: UsageEvent) -> None:
        """Take one event; never raises, never blocks."""
        ...


@dataclass
class UsageTally:
    """What one request used so far, across its calls and turns."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_long_tokens: int = 0
    model: str | None = None
    """`provider/model` of the last call that answered."""
    steps: int = 0
    """Model turns of a tool loop (replayed ones included)."""
    tools: list[str] = field(default_factory=list[str])
    """`server/tool` names the loop called, once each, in first-call order."""

    def answered(self, model: str, usage: Usage) -> None:
        """Count a call that answered, with the tokens it reported."""
        self.model = model
        self.add(usage)

    def add(self, usage: Usage) -> None:
        """Count tokens spent for the request (a replayed turn's included)."""
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cache_read_tokens += usage.cached_input_tokens or 0
        self.cache_write_tokens += usage.cache_write_tokens or 0
        self.cache_write_long_tokens += usage.cache_write_long_tokens or 0

    def called(self, server: str, tool: str) -> None:
        """Note a tool the loop called."""
        name = f"{server}/{tool}"
        if name not in self.tools:
            self.tools.append(name)


def operation_of(request: ChatRequest) -> str:
    """`tool_loop` when the worker runs the request's MCP tool calls itself, else `chat`."""
    execution = request.tool_execution
    if request.mcp_toolsets() and execution is not None and execution.mode == "auto":
        return TOOL_LOOP
    return CHAT


def usage_event(
    job: ChatJob, *, operation: str, target: str, outcome: str, seconds: float
) -> UsageEvent:
    """The usage event of `job`, ended with `outcome` after `seconds`."""
    tally = job.tally
    user = (job.request.metadata or {}).get("user_id")
    return UsageEvent(
        request_id=_cut(job.key[1]) or "",
        service=SERVICE,
        tenant=_cut(job.tenant),
        user=_cut(user),
        operation=operation,
        target=_cut(target),
        model=_cut(tally.model),
        input_tokens=tally.input_tokens,
        output_tokens=tally.output_tokens,
        cache_read_tokens=tally.cache_read_tokens,
        cache_write_tokens=tally.cache_write_tokens,
        cache_write_long_tokens=tally.cache_write_long_tokens,
        latency_seconds=max(0.0, seconds),
        outcome=outcome,
        steps=tally.steps,
        tools=[name[:_MAX_FIELD] for name in tally.tools],
        finished_at=datetime.now(UTC),
    )


def _cut(value: str | None) -> str | None:
    return None if value is None else value[:_MAX_FIELD]
