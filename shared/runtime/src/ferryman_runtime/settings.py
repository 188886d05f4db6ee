"""Settings every worker shares; each service subclasses with its own env prefix."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ferryman.contracts.events import DEFAULT_HEALTH_TOPIC, dlq_topic_for
from ferryman.kafka_config import KafkaConnection


class WorkerSettings(BaseSettings):
    """Kafka, topics, delivery, resilience and HTTP settings common to all workers.

    `KAFKA_BOOTSTRAP_SERVERS` is read without prefix so one variable names the
    brokers for every worker and the CLI. Each service subclasses this with its own
    env prefix and its own topic defaults.
    """

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
    )
    """Comma-separated `host:port` list of Kafka brokers."""
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        validation_alias=AliasChoices("KAFKA_SECURITY_PROTOCOL", "kafka_security_protocol"),
    )
    """How the worker's Kafka clients connect (`KAFKA_SECURITY_PROTOCOL`, no prefix)."""
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SASL_MECHANISM", "kafka_sasl_mechanism")
    )
    """SASL mechanism (`KAFKA_SASL_MECHANISM`)."""
    kafka_sasl_username: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SASL_USERNAME", "kafka_sasl_username")
    )
    """SASL user (`KAFKA_SASL_USERNAME`)."""
    kafka_sasl_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SASL_PASSWORD", "kafka_sasl_password")
    )
    """SASL password (`KAFKA_SASL_PASSWORD`); never logged."""
    kafka_ssl_cafile: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SSL_CAFILE", "kafka_ssl_cafile")
    )
    """CA bundle that signs the brokers' certificates (`KAFKA_SSL_CAFILE`)."""
    kafka_ssl_certfile: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SSL_CERTFILE", "kafka_ssl_certfile")
    )
    """Client certificate for mTLS (`KAFKA_SSL_CERTFILE`)."""
    kafka_ssl_keyfile: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SSL_KEYFILE", "kafka_ssl_keyfile")
    )
    """Client key for mTLS (`KAFKA_SSL_KEYFILE`)."""
    kafka_ssl_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SSL_PASSWORD", "kafka_ssl_password")
    )
    """Password of the client key (`KAFKA_SSL_PASSWORD`)."""
    group_id: str = "ferryman"
    """Consumer group shared by all replicas of the service."""
    request_topic: str = "requests"
    """Topic the worker consumes requests from."""
    dlq_topic: str = ""
    """Dead-letter topic; empty means `<request_topic>.dlq`."""
    default_reply_topic: str = "results"
    """Reply topic for requests without a `replyto` extension."""
    reply_topics: list[str] = Field(
        default_factory=lambda: ["*.results", "*.results.*", "*.replies", "*.replies.*"]
    )
    """Patterns (`fnmatch`, `*` matches dots too) a request's `replyto` must match; the
    default reply topic is always allowed, internal topics and the worker's own request,
    dead-letter and health topics never are."""
    reply_topics_by_tenant: dict[str, list[str]] = Field(default_factory=dict)
    """Per tenant, the patterns its requests' `replyto` must match instead of `reply_topics`."""
    health_topic: str = DEFAULT_HEALTH_TOPIC
    """Topic of the periodic health reports."""
    handler_max_attempts: int = Field(default=8, ge=1)
    """Deliveries of one record to the handler when publishing its results fails (Kafka
    errors); after the last one the record is dead-lettered with the reason."""
    handler_retry_base_delay: float = Field(default=0.5, ge=0)
    """First delay between two deliveries of a record (doubling each time)."""
    handler_retry_max_delay: float = Field(default=30.0, ge=0)
    """Longest delay between two deliveries (8 attempts span about a minute, long enough
    to ride out a broker restart before a record is dead-lettered)."""
    retry_max_attempts: int = Field(default=3, ge=1)
    """Calls per request on one upstream (the first plus retries)."""
    retry_base_delay: float = Field(default=0.5, ge=0)
    """Backoff base (full jitter, doubling per attempt); never less than Retry-After."""
    retry_max_delay: float = Field(default=8.0, ge=0)
    """Backoff cap."""
    breaker_fail_max: int = Field(default=5, ge=1)
    """Consecutive retryable failures of one upstream that open its circuit."""
    breaker_reset_timeout: float = Field(default=30.0, gt=0)
    """Seconds an open circuit waits before letting one probe request through."""
    instance_id: str = Field(default_factory=socket.gethostname)
    """Names this replica in `ce_source` and client ids."""
    producer_linger_ms: int = Field(default=0, ge=0, le=100)
    """Milliseconds the producer waits to batch reply events. 0 sends each at once: a
    linger delays every stream's first chunk by its full length and saved no measurable CPU
    even at 10 requests/s (docs/benchmarks.md, "Linger")."""
    key_ordered: bool = False
    """Run requests with the same Kafka key one at a time, in offset order (for workers
    whose operations on one key must not reorder); different keys still run concurrently."""
    max_in_flight: int = Field(default=256, ge=1)
    """Requests processed at once by one process; fetching pauses at the limit."""
    grace_period: float = Field(default=30.0, ge=0)
    """Seconds in-flight requests may run after SIGTERM before being cancelled (and redelivered)."""
    dedupe_window: float = Field(default=600.0, ge=0)
    """Seconds a finished request id is remembered to skip duplicates."""
    dedupe_max_entries: int = Field(default=100_000, ge=1)
    """Finished request ids remembered at most."""
    create_topics: bool = True
    """Create the service's topics at startup when they are missing."""
    topic_partitions: int = Field(default=6, ge=1)
    """Partitions of topics created at startup."""
    topic_replication_factor: int = Field(default=1, ge=1)
    """Replication factor of topics created at startup."""
    http_host: str = "0.0.0.0"
    """Address of the `/metrics` and `/health` server."""
    http_port: int = Field(default=8080, ge=0, le=65535)
    """Port of the `/metrics` and `/health` server."""
    log_level: str = "INFO"
    """Python logging level."""
    metrics_max_tenants: int = Field(default=50, ge=0)
    """Tenants not named in the configuration that get their own `tenant` label value
    (the first seen by this process); later ones are counted as `other`."""
    lag_interval: float = Field(default=10.0, gt=0, le=300)
    """Seconds between two refreshes of the consumer lag (keep it below the scrape
    interval)."""
    log_format: Literal["text", "json"] = "text"
    """`text` (human-readable) or `json`: one object per line with the service, request id,
    tenant, trace and span ids (`<PREFIX>_LOG_FORMAT`)."""
    price_table: Path | None = Field(
        default=None, validation_alias=AliasChoices("FERRYMAN_PRICE_TABLE", "price_table")
    )
    """Token price table for usage costs (`FERRYMAN_PRICE_TABLE`, no prefix; docs/usage.md);
    None uses the one packaged with the runtime."""

    @model_validator(mode="after")
    def _derive_topics(self) -> Self:
        if not self.dlq_topic:
            self.dlq_topic = dlq_topic_for(self.request_topic)
        return self

    def kafka_connection(self) -> KafkaConnection:
        """The Kafka connection every client of the worker uses (producer, consumer, admin).

        Raises:
            pydantic.ValidationError: the security settings are inconsistent.
        """
        return KafkaConnection(
            bootstrap_servers=self.kafka_bootstrap_servers,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
            ssl_cafile=self.kafka_ssl_cafile,
            ssl_certfile=self.kafka_ssl_certfile,
            ssl_keyfile=self.kafka_ssl_keyfile,
            ssl_password=self.kafka_ssl_password,
        )
