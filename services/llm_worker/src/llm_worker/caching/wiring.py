"""The response cache as the worker's settings configure it, and the control event's time."""

from __future__ import annotations

from datetime import UTC, datetime

from ferryman.codec import IncomingEvent
from llm_worker.caching.backends import MemoryStore, RedisStore, ResponseStore
from llm_worker.caching.response_cache import ResponseCache
from llm_worker.caching.response_key import worker_defaults
from llm_worker.metrics import LlmMetrics
from llm_worker.settings import LlmWorkerSettings


def build_response_cache(settings: LlmWorkerSettings, metrics: LlmMetrics) -> ResponseCache | None:
    """The response cache on the configured backend (None: `off`).

    Raises:
        OSError: the Redis password file cannot be read.
        ValueError: the Redis URL is malformed.
    """
    config = settings.response_cache
    store: ResponseStore
    if config.backend == "off":
        return None
    if config.backend == "redis":
        assert config.redis_url is not None  # the settings refuse redis without a URL
        store = RedisStore(
            config.redis_url.get_secret_value(),
            password_file=config.redis_password_file,
            marker_ttl=int(settings.cancel_window) + 60,
        )
    else:
        store = MemoryStore(max_entries=config.max_entries, max_bytes=config.max_bytes)
    return ResponseCache(
        store,
        config,
        metrics.response_cache,
        backend=config.backend,
        defaults=worker_defaults(settings.anthropic, settings.gemini),
    )


def event_time(event: IncomingEvent) -> datetime:
    """The event's `time` attribute, else now (entries stored before it are invalidated)."""
    raw = event.attributes.get("time")
    if isinstance(raw, datetime):
        return raw if raw.tzinfo is not None else raw.replace(tzinfo=UTC)
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw.replace("z", "Z"))
        except ValueError:
            return datetime.now(UTC)
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return datetime.now(UTC)
