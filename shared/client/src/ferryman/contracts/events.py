"""Event type names, CloudEvents extension names and default topics."""

from typing import Final

SPECVERSION: Final = "1.0"

LLM_CHAT_REQUESTED: Final = "ferryman.llm.chat.requested"
LLM_CHAT_CHUNK: Final = "ferryman.llm.chat.chunk"
LLM_CHAT_COMPLETED: Final = "ferryman.llm.chat.completed"
LLM_CHAT_FAILED: Final = "ferryman.llm.chat.failed"
LLM_CHAT_RESTARTED: Final = "ferryman.llm.chat.restarted"
HEALTH_REPORTED: Final = "ferryman.health.reported"

DEFAULT_LLM_REQUEST_TOPIC: Final = "llm.requests"
DEFAULT_LLM_REPLY_TOPIC: Final = "llm.results"
DEFAULT_HEALTH_TOPIC: Final = "ferryman.health"

EXT_REPLY_TO: Final = "replyto"
EXT_PARTITION_KEY: Final = "partitionkey"
EXT_EXPIRY_TIME: Final = "expirytime"
EXT_TRACEPARENT: Final = "traceparent"
EXT_TRACESTATE: Final = "tracestate"
EXT_TENANT: Final = "tenant"
EXT_CORRELATION_ID: Final = "correlationid"

REQUEST_EXTENSIONS: Final = (
    EXT_REPLY_TO,
    EXT_PARTITION_KEY,
    EXT_EXPIRY_TIME,
    EXT_TRACEPARENT,
    EXT_TRACESTATE,
    EXT_TENANT,
)

# Headers added to dead-lettered records (Kafka header names, not CloudEvents attributes).
DLQ_ORIGINAL_TOPIC: Final = "dlq-original-topic"
DLQ_ORIGINAL_PARTITION: Final = "dlq-original-partition"
DLQ_ORIGINAL_OFFSET: Final = "dlq-original-offset"
DLQ_REASON: Final = "dlq-reason"
DLQ_ERROR_TYPE: Final = "dlq-error-type"
DLQ_ERROR_MESSAGE: Final = "dlq-error-message"
DLQ_ATTEMPTS: Final = "dlq-attempts"
DLQ_FAILED_AT: Final = "dlq-failed-at"
DLQ_REPLAY_OF: Final = "dlq-replay-of"
DLQ_HEADERS: Final = (
    DLQ_ORIGINAL_TOPIC,
    DLQ_ORIGINAL_PARTITION,
    DLQ_ORIGINAL_OFFSET,
    DLQ_REASON,
    DLQ_ERROR_TYPE,
    DLQ_ERROR_MESSAGE,
    DLQ_ATTEMPTS,
    DLQ_FAILED_AT,
)


def dlq_topic_for(topic: str) -> str:
    """Return the dead-letter topic of `topic` (`<topic>.dlq`)."""
    return f"{topic}.dlq"
