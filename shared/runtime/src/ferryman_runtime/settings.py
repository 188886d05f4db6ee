"""Settings every worker shares; each service subclasses with its own env prefix."""

from __future__ import annotations

import socket

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    """Kafka, concurrency and HTTP settings common to all workers.

    `KAFKA_BOOTSTRAP_SERVERS` is read without prefix so one variable names the
    brokers for every worker and the CLI.
    """

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
    )
    """Comma-separated `host:port` list of Kafka brokers."""
    group_id: str = "ferryman"
    """Consumer group shared by all replicas of the service."""
    instance_id: str = Field(default_factory=socket.gethostname)
    """Names this replica in `ce_source` and client ids."""
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
