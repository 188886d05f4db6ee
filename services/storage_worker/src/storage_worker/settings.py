"""The storage_worker's settings, read once from the environment at the entry point
(`STORAGE_WORKER_` prefix, plus `KAFKA_BOOTSTRAP_SERVERS`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from ferryman.contracts.storage import (
    DEFAULT_INLINE_LIMIT,
    DEFAULT_STORAGE_EVENTS_TOPIC,
    DEFAULT_STORAGE_REPLY_TOPIC,
    DEFAULT_STORAGE_REQUEST_TOPIC,
)
from ferryman.contracts.usage import USAGE_TOPIC
from ferryman_runtime.settings import WorkerSettings


class StorageWorkerSettings(WorkerSettings):
    """Environment variables prefixed `STORAGE_WORKER_`."""

    model_config = SettingsConfigDict(
        env_prefix="STORAGE_WORKER_",
        env_nested_delimiter="__",
        extra="ignore",
        populate_by_name=True,
    )

    group_id: str = "ferryman-storage-worker"
    request_topic: str = DEFAULT_STORAGE_REQUEST_TOPIC
    default_reply_topic: str = DEFAULT_STORAGE_REPLY_TOPIC
    events_topic: str = DEFAULT_STORAGE_EVENTS_TOPIC
    """Object events (created, deleted, metadata changed)."""
    usage_topic: str = USAGE_TOPIC
    """One usage event per finished request (tenant, operation, backend, bytes, outcome)."""
    pipeline_reply_topic: str | None = None
    """Where the replies of pipelines run on upload go (None: `default_reply_topic`; another
    topic must exist and be allowed by `reply_topics`)."""
    max_in_flight: int = Field(default=256, ge=1)
    policy_file: Path | None = None
    """Backends and each tenant's space on them (YAML or JSON). None: the local backend
    under `local_root`, each tenant in its own folder."""
    policy_poll_interval: float = Field(default=1.0, gt=0)
    local_root: Path = Path(".ferryman/storage")
    """The local backend's root without a policy file."""
    public_url: str | None = Field(default=None, pattern=r"^https?://[^\s?#]+$")
    """The worker's HTTP address as clients reach it: the base of the local backends'
    signed URLs (`https://storage.example.com`). None: its own (`http_host`, or its host
    name when it listens on every address, and `http_port`)."""
    url_signing_key: SecretStr | None = None
    """A credential reference (`env:VAR` or `file:/path`, never the key itself) to the key
    (32 bytes at least) that signs the local backends' URLs, the same on every replica.
    None: a random key of each process, whose URLs work on that replica only."""
    inline_limit: int = Field(default=DEFAULT_INLINE_LIMIT, ge=1, le=700 * 1024)
    """Bytes of content carried inline in requests and replies (before base64; below Kafka's
    1 MB message limit with room for the envelope)."""
