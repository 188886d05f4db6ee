"""Ferryman's public event contract: pure pydantic models, no I/O, no SDKs.

Everything a producer or consumer of Ferryman events needs to know lives here:
event type names, CloudEvents extension names, default topics, request and
result payloads, and the shared error taxonomy.
"""

from ferryman.contracts.errors import ErrorCode, ErrorInfo, FerrymanError
from ferryman.contracts.events import DEFAULT_HEALTH_TOPIC, HEALTH_REPORTED, dlq_topic_for
from ferryman.contracts.health import HealthReport, HealthStatus, UpstreamHealth
from ferryman.contracts.llm import (
    DEFAULT_LLM_REPLY_TOPIC,
    DEFAULT_LLM_REQUEST_TOPIC,
    LLM_CHAT_CHUNK,
    LLM_CHAT_COMPLETED,
    LLM_CHAT_FAILED,
    LLM_CHAT_REQUESTED,
    LLM_CHAT_RESTARTED,
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatRequest,
    ChatRestarted,
    ChunkDelta,
    CompletedToolCall,
    FinishReason,
    Latency,
    ToolCallDelta,
    Usage,
)
from ferryman.contracts.llm_cache import (
    LLM_CACHE_INVALIDATE_REQUESTED,
    CacheControl,
    CacheInvalidation,
    PromptCache,
    ResponseCacheOptions,
)
from ferryman.contracts.llm_tools import (
    LLM_CHAT_PROGRESS,
    LLM_CHAT_TOOL_CALLED,
    LLM_CHAT_TOOL_RESULT,
    ChatProgress,
    McpToolset,
    ToolCallFinished,
    ToolCallStarted,
    ToolExecution,
)

__all__ = [
    "DEFAULT_HEALTH_TOPIC",
    "DEFAULT_LLM_REPLY_TOPIC",
    "DEFAULT_LLM_REQUEST_TOPIC",
    "HEALTH_REPORTED",
    "LLM_CACHE_INVALIDATE_REQUESTED",
    "LLM_CHAT_CHUNK",
    "LLM_CHAT_COMPLETED",
    "LLM_CHAT_FAILED",
    "LLM_CHAT_PROGRESS",
    "LLM_CHAT_REQUESTED",
    "LLM_CHAT_RESTARTED",
    "LLM_CHAT_TOOL_CALLED",
    "LLM_CHAT_TOOL_RESULT",
    "CacheControl",
    "CacheInvalidation",
    "ChatChunk",
    "ChatCompleted",
    "ChatFailed",
    "ChatProgress",
    "ChatRequest",
    "ChatRestarted",
    "ChunkDelta",
    "CompletedToolCall",
    "ErrorCode",
    "ErrorInfo",
    "FerrymanError",
    "FinishReason",
    "HealthReport",
    "HealthStatus",
    "Latency",
    "McpToolset",
    "PromptCache",
    "ResponseCacheOptions",
    "ToolCallDelta",
    "ToolCallFinished",
    "ToolCallStarted",
    "ToolExecution",
    "UpstreamHealth",
    "Usage",
    "dlq_topic_for",
]
