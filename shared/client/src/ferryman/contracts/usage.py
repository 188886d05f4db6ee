"""The usage event: one per finished request, on the `ferryman.usage` topic.

Every worker publishes one when a request ends (completed, failed or cancelled), so that
what each tenant and user spends can be reported without reading the workers' logs. The
event carries no prompt, argument or object content: only who, what, how much and how
it ended.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

USAGE_TOPIC: Final = "ferryman.usage"
"""The topic usage events go to (override per worker with `<PREFIX>_USAGE_TOPIC`)."""

USAGE_RECORDED: Final = "ferryman.usage.recorded"
"""The CloudEvents `type` of a usage event."""

ServiceName = Literal["llm_worker", "mcp_worker", "storage_worker"]


class UsageEvent(BaseModel):
    """The `data` of `ferryman.usage.recorded`: what one request used.

    `outcome` is `completed`, `cancelled` or the failure's error code. Tokens are zero for
    requests that use none (tool calls, storage); `bytes` is zero for requests that move no
    object data. `cost_usd` is None when the price table has no price for the model.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = 1
    request_id: str = Field(max_length=256)
    """The request's CloudEvents `id`."""
    service: ServiceName
    tenant: str | None = Field(default=None, max_length=256)
    user: str | None = Field(default=None, max_length=256)
    """Who asked, as the request says (`metadata.user_id` of a chat, `principal` of a tool
    call); None when the request does not say."""
    operation: str = Field(max_length=64)
    """`chat`, `tool_loop` or `prompt_cache_storage` (a provider cache's storage); `tool`,
    `resource`, `prompt` or `list`; `put`, `get`, …"""
    target: str | None = Field(default=None, max_length=256)
    """The route alias (or `direct`), the MCP server, or the storage backend."""
    model: str | None = Field(default=None, max_length=256)
    """`provider/model` that answered (LLM requests)."""
    tool: str | None = Field(default=None, max_length=256)
    """`server/tool` called (MCP tool calls)."""
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cache_read_tokens: int = Field(default=0, ge=0)
    """Input tokens read from the provider's prompt cache (part of `input_tokens`)."""
    cache_write_tokens: int = Field(default=0, ge=0)
    """Input tokens written to the provider's prompt cache (part of `input_tokens`)."""
    cache_write_long_tokens: int = Field(default=0, ge=0)
    """The part of `cache_write_tokens` written with the long (1h) retention."""
    cache_storage_token_hours: float = Field(default=0, ge=0)
    """Tokens × hours a provider-side cache was kept (Gemini cached contents; events with
    `operation` `prompt_cache_storage`)."""
    response_cache: Literal["hit", "stored"] | None = None
    """`hit`: answered from the worker's response cache (no tokens, no cost); `stored`:
    the answer was stored there."""
    cost_usd: float | None = Field(default=None, ge=0)
    price_table_version: str | None = None
    latency_seconds: float = Field(ge=0)
    """From the worker starting the request to its terminal event."""
    outcome: str = Field(max_length=64)
    steps: int = Field(default=0, ge=0)
    """Tool-loop steps (model turns) the request took."""
    tools: list[str] = Field(default_factory=list[str])
    """`server/tool` names the tool loop called, once each, in first-call order."""
    bytes: int = Field(default=0, ge=0)
    """Object bytes read or written (storage requests)."""
    finished_at: AwareDatetime
    """When the request ended (with its UTC offset)."""
