"""Ferryman's public event contract: pure pydantic models, no I/O, no SDKs.

Everything a producer or consumer of Ferryman events needs to know lives here:
event type names, CloudEvents extension names, default topics, request and
result payloads, and the shared error taxonomy.
"""

from shared.contracts.errors import ErrorCode, ErrorInfo, FerrymanError
from shared.contracts.events import (
    DEFAULT_LLM_REPLY_TOPIC,
    DEFAULT_LLM_REQUEST_TOPIC,
    LLM_CHAT_CHUNK,
    LLM_CHAT_COMPLETED,
    LLM_CHAT_FAILED,
    LLM_CHAT_REQUESTED,
    dlq_topic_for,
)
from shared.contracts.llm import (
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatRequest,
    ChunkDelta,
    CompletedToolCall,
    FinishReason,
    Latency,
    ToolCallDelta,
    Usage,
)

__all__ = [
    "DEFAULT_LLM_REPLY_TOPIC",
    "DEFAULT_LLM_REQUEST_TOPIC",
    "LLM_CHAT_CHUNK",
    "LLM_CHAT_COMPLETED",
    "LLM_CHAT_FAILED",
    "LLM_CHAT_REQUESTED",
    "ChatChunk",
    "ChatCompleted",
    "ChatFailed",
    "ChatRequest",
    "ChunkDelta",
    "CompletedToolCall",
    "ErrorCode",
    "ErrorInfo",
    "FerrymanError",
    "FinishReason",
    "Latency",
    "ToolCallDelta",
    "Usage",
    "dlq_topic_for",
]
