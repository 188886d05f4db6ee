"""The LLM worker's settings, read once from the environment at the entry point."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from shared.contracts.events import (
    DEFAULT_LLM_REPLY_TOPIC,
    DEFAULT_LLM_REQUEST_TOPIC,
    dlq_topic_for,
)
from shared.runtime.settings import WorkerSettings


class LlmWorkerSettings(WorkerSettings):
    """Environment variables prefixed `LLM_WORKER_` (plus `KAFKA_BOOTSTRAP_SERVERS`, `OPENAI_*`)."""

    model_config = SettingsConfigDict(
        env_prefix="LLM_WORKER_", extra="ignore", populate_by_name=True
    )

    group_id: str = "ferryman-llm-worker"
    http_port: int = Field(default=8081, ge=0, le=65535)
    request_topic: str = DEFAULT_LLM_REQUEST_TOPIC
    """Topic the worker consumes chat requests from."""
    dlq_topic: str = ""
    """Dead-letter topic; empty means `<request_topic>.dlq`."""
    default_reply_topic: str = DEFAULT_LLM_REPLY_TOPIC
    """Reply topic for requests without a `replyto` extension."""
    model_aliases: dict[str, str] = Field(default_factory=dict)
    """JSON object mapping alias → `provider/model`, e.g. `{"default": "openai/gpt-4o-mini"}`."""
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "LLM_WORKER_OPENAI_API_KEY")
    )
    """OpenAI API key; the `openai` provider is enabled when it or a base URL is set."""
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "LLM_WORKER_OPENAI_BASE_URL")
    )
    """Base URL of an OpenAI-compatible server (vLLM, Ollama, …), e.g. `http://localhost:11434/v1`."""
    openai_timeout: float = Field(default=600.0, gt=0)
    """Seconds an OpenAI call may take in all (read timeout between stream events included)."""
    openai_connect_timeout: float = Field(default=10.0, gt=0)
    """Seconds to establish a connection to the OpenAI endpoint."""
    mock_token_delay_ms: float = Field(default=0.0, ge=0)
    """Delay between the mock provider's tokens (for demos)."""

    @field_validator("openai_api_key", "openai_base_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # Compose passes `${OPENAI_API_KEY:-}` as an empty string when the variable is unset.
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _default_dlq(self) -> LlmWorkerSettings:
        if not self.dlq_topic:
            self.dlq_topic = dlq_topic_for(self.request_topic)
        for alias, target in self.model_aliases.items():
            if "/" not in target:
                raise ValueError(
                    f"model alias {alias!r} must map to 'provider/model', got {target!r}"
                )
        return self

    @property
    def openai_enabled(self) -> bool:
        """Whether the `openai` provider is configured."""
        return self.openai_api_key is not None or self.openai_base_url is not None
