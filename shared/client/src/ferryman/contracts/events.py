"""What every domain shares: CloudEvents extension names, the health event and topic, and the
dead-letter headers. Each domain's event types and topics live in its own module
(`ferryman.contracts.llm`, `…mcp`, `…storage`)."""

from typing import Final

SPECVERSION: Final = "1.0"

HEALTH_REPORTED: Final = "ferryman.health.reported"

DEFAULT_HEALTH_TOPIC: Final = "ferryman.health"

EXT_REPLY_TO: Final = "replyto"
EXT_PARTITION_KEY: Final = "partitionkey"
EXT_EXPIRY_TIME: Final = "expirytime"
EXT_TRACEPARENT: Final = "traceparent"
EXT_TRACESTATE: Final = "tracestate"
EXT_TENANT: Final = "tenant"
EXT_CORRELATION_ID: Final = "correlationid"
EXT_RUN_ID: Final = "runid"
"""On every reply event: the execution that produced it. A redelivered request runs again
under a new run id; run ids of one request sort in the order the runs started, so a consumer
follows the greatest run id it has seen and discards what earlier runs published."""
EXT_DATAREF: Final = "dataref"
"""On object events (CloudEvents' dataref extension): the object the event is about, as a
`ferryman-storage://<backend>/<key>` reference in the tenant's space (the claim check: the
bytes stay in storage; a chat can name the object by it)."""
EXT_REPLY_TOKEN: Final = "replytoken"
"""Optional on a request: a secret the worker echoes on every reply event, so a client can
accept only replies to requests it sent."""

REQUEST_EXTENSIONS: Final = (
    EXT_REPLY_TO,
    EXT_PARTITION_KEY,
    EXT_EXPIRY_TIME,
    EXT_TRACEPARENT,
    EXT_TRACESTATE,
    EXT_TENANT,
    EXT_REPLY_TOKEN,
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
DLQ_TRUNCATED: Final = "dlq-truncated"
"""Only on a dead letter whose value was cut to fit the topic: the original value's size."""
DLQ_HEADERS: Final = (
    DLQ_ORIGINAL_TOPIC,
    DLQ_ORIGINAL_PARTITION,
    DLQ_ORIGINAL_OFFSET,
    DLQ_REASON,
    DLQ_ERROR_TYPE,
    DLQ_ERROR_MESSAGE,
    DLQ_ATTEMPTS,
    DLQ_FAILED_AT,
    DLQ_TRUNCATED,
)


def dlq_topic_for(topic: str) -> str:
    """Return the dead-letter topic of `topic` (`<topic>.dlq`)."""
    return f"{topic}.dlq"
