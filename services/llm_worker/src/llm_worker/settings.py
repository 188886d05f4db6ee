"""The LLM worker's settings, read once from the environment at the entry point.

Provider settings are nested: `LLM_WORKER_<PROVIDER>__<FIELD>` (for example
`LLM_WORKER_AZURE__ENDPOINT`, `LLM_WORKER_GEMINI__SAFETY_SETTINGS` as JSON). The
conventional variables (`OPENAI_API_KEY`, `AZURE_OPENAI_API_KEY`, …) are read too
and fill in what the nested settings leave unset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from ferryman.contracts.llm import DEFAULT_LLM_REPLY_TOPIC, DEFAULT_LLM_REQUEST_TOPIC
from ferryman.contracts.mcp import (
    DEFAULT_MCP_CATALOG_TOPIC,
    DEFAULT_MCP_CONTROL_TOPIC,
    DEFAULT_MCP_REQUEST_TOPIC,
)
from ferryman.contracts.usage import USAGE_TOPIC
from ferryman_runtime.settings import WorkerSettings
from llm_worker.datarefs.settings import DataRefSettings
from llm_worker.providers.config import (
    AnthropicConfig,
    AzureOpenAIConfig,
    GeminiConfig,
    OpenAIConfig,
)
from llm_worker.routing.capabilities import Capabilities


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class ResponseCacheSettings(BaseModel):
    """The response cache's backend and bounds (`LLM_WORKER_RESPONSE_CACHE__…`).

    The cache is still off per route and per request unless they turn it on
    (docs/caching.md).
    """

    model_config = ConfigDict(extra="forbid")

    backend: Literal["off", "memory", "redis"] = "memory"
    """`memory`: per replica; `redis`: shared by every replica (needs `redis_url`)."""
    default_ttl: int = Field(default=3600, ge=1)
    """Seconds an answer is kept when neither the request nor the route says."""
    max_ttl: int = Field(default=86_400, ge=1)
    """Seconds an answer is kept at most, whatever the request or route asks."""
    max_entries: int = Field(default=10_000, ge=1)
    """`memory`: answers kept at most (the least recently used go first)."""
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    """`memory`: bytes of stored answers at most."""
    max_entry_bytes: int = Field(default=512 * 1024, ge=1024)
    """A larger answer is not stored."""
    lookup_timeout: float = Field(default=0.05, gt=0)
    """Seconds a lookup may take; a slower one counts as a miss."""
    redis_url: SecretStr | None = None
    """`redis://host:6379/0` or `rediss://…` for TLS; the password may be in the URL."""
    redis_password_file: Path | None = None
    """A file holding the Redis password (instead of putting it in the URL)."""

    @model_validator(mode="after")
    def _redis_needs_url(self) -> ResponseCacheSettings:
        if self.backend == "redis" and self.redis_url is None:
            raise ValueError("response_cache.backend redis needs response_cache.redis_url")
        return self


class LlmWorkerSettings(WorkerSettings):
    """Environment variables prefixed `LLM_WORKER_` (plus `KAFKA_BOOTSTRAP_SERVERS` and the
    providers' conventional key variables)."""

    model_config = SettingsConfigDict(
        env_prefix="LLM_WORKER_", env_nested_delimiter="__", extra="ignore", populate_by_name=True
    )

    group_id: str = "ferryman-llm-worker"
    max_in_flight: int = Field(default=2048, ge=1)
    """Requests processed at once by one process (each provider's connection pool is sized
    from it); streams mostly wait on the provider, so one process carries thousands."""
    http_port: int = Field(default=8081, ge=0, le=65535)
    request_topic: str = DEFAULT_LLM_REQUEST_TOPIC
    """Topic the worker consumes chat requests from."""
    default_reply_topic: str = DEFAULT_LLM_REPLY_TOPIC
    """Reply topic for requests without a `replyto` extension."""
    model_aliases: dict[str, str] = Field(default_factory=dict)
    """JSON object mapping alias → `provider/model`, e.g. `{"default": "openai/gpt-4o-mini"}`."""
    capabilities: dict[str, Capabilities] = Field(default_factory=dict)
    """JSON object: `provider/model` or `provider/*` → capabilities (see `Capabilities`)."""
    first_token_timeout: float = Field(default=30.0, gt=0)
    """Seconds a provider may take to send the first token before the call fails (timeout)
    and the request fails over; raise it per deployment for slow starters (reasoning
    models, very long prompts). See docs/llm-routing.md for why 30."""
    stream_idle_timeout: float = Field(default=30.0, gt=0)
    """Seconds a provider's stream may stay silent after the first token."""
    request_timeout: float = Field(default=600.0, gt=0)
    """Seconds a provider call may take in all (and never past the request's `expirytime`)."""
    routing_file: Path | None = None
    """YAML file of deployments, routes and tenant quotas (hot-reloaded; docs/llm-routing.md)."""
    routing_poll_interval: float = Field(default=1.0, gt=0)
    """Seconds between checks of the routing file for a new version."""
    attempt_budget: int = Field(default=6, ge=1)
    """Calls per request across all deployments (retries and failovers), unless a route says."""
    restart_streams: bool = True
    """Restart a `provider/model` stream that failed after chunks were published (announced
    by a `restarted` event); routes set this per route."""
    max_direct_models: int = Field(default=256, ge=1)
    """Direct `provider/model` upstreams whose circuit breaker and Retry-After hold are kept
    at once (producers choose these names; the least recently used idle one is forgotten)."""
    health_report_interval: float = Field(default=15.0, gt=0)
    """Seconds between health reports."""
    health_probe_interval: float = Field(default=30.0, gt=0)
    """Seconds between active probes (an unbilled model listing per provider client)."""
    health_probe_timeout: float = Field(default=5.0, gt=0)
    """Seconds a probe may take before it counts as failed."""
    control_topic: str = DEFAULT_MCP_CONTROL_TOPIC
    """The mcp_worker's control topic: cancels of chat requests (and of tool calls) are read
    from it by every replica, and the worker cancels the tool calls of a cancelled chat there."""
    cancel_window: float = Field(default=600.0, gt=0)
    """Seconds a cancel that arrives before its request is remembered; on start the control
    topic is read back this far."""
    catalog_topic: str = DEFAULT_MCP_CATALOG_TOPIC
    """The mcp_worker's compacted catalog topic, where MCP tools offered to models come from."""
    mcp_request_topic: str = DEFAULT_MCP_REQUEST_TOPIC
    """Where tool calls of tool loops are sent (the mcp_worker's request topic)."""
    tool_loop_topic: str = "llm.tool-loop.results"
    """The tool loop's topic: the mcp_worker's replies to tool calls and the worker's journal
    of each step, read whole by every replica (a redelivered request finds its earlier steps
    and results there). It must match the mcp_worker's `reply_topics` patterns."""
    tool_loop_window: float = Field(default=3600.0, gt=0)
    """Seconds of the tool-loop topic a replica reads back at start and keeps in memory: a
    request redelivered within it resumes its loop instead of running it again."""
    tool_loop_memory: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    """Bytes of steps and tool results kept for resumption at most (oldest forgotten first)."""
    tool_loop_timeout: float = Field(default=1800.0, gt=0)
    """Seconds a whole tool loop may take (every turn and tool call), unless the request's
    `expirytime` comes first."""
    tool_result_max_chars: int = Field(default=100_000, ge=100)
    """Characters of one tool result given to the model at most (the rest is cut, and said)."""
    usage_topic: str = USAGE_TOPIC
    """Where one usage event per finished request goes (docs/usage.md)."""
    mock_token_delay_ms: float = Field(default=0.0, ge=0)
    """Delay between the mock provider's tokens (for demos)."""
    prompt_cache_auto: bool = False
    """Place prompt-cache breakpoints automatically on direct `provider/model` requests
    (routes say it with `prompt_cache.auto`)."""
    response_cache: ResponseCacheSettings = Field(default_factory=ResponseCacheSettings)
    """The response cache's backend and bounds (docs/caching.md)."""

    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)
    azure: AzureOpenAIConfig = Field(default_factory=AzureOpenAIConfig)
    anthropic: AnthropicConfig = Field(default_factory=AnthropicConfig)
    gemini: GeminiConfig = Field(default_factory=GeminiConfig)
    storage: DataRefSettings = Field(default_factory=DataRefSettings)
    """How dataref parts are resolved through the storage_worker (`LLM_WORKER_STORAGE__…`;
    off until `REQUEST_TOPIC` is set)."""

    openai_api_key: SecretStr | None = Field(default=None, validation_alias=_env("OPENAI_API_KEY"))
    openai_base_url: str | None = Field(default=None, validation_alias=_env("OPENAI_BASE_URL"))
    azure_openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("AZURE_OPENAI_API_KEY")
    )
    azure_openai_endpoint: str | None = Field(
        default=None, validation_alias=_env("AZURE_OPENAI_ENDPOINT")
    )
    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("ANTHROPIC_API_KEY")
    )
    gemini_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("GEMINI_API_KEY", "GOOGLE_API_KEY")
    )

    @field_validator(
        "openai_api_key",
        "openai_base_url",
        "azure_openai_api_key",
        "azure_openai_endpoint",
        "anthropic_api_key",
        "gemini_api_key",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # Compose passes `${OPENAI_API_KEY:-}` as an empty string when the variable is unset.
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _complete(self) -> LlmWorkerSettings:
        for alias, target in self.model_aliases.items():
            if "/" not in target:
                raise ValueError(
                    f"model alias {alias!r} must map to 'provider/model', got {target!r}"
                )
        self.openai = _fill(self.openai, api_key=self.openai_api_key, base_url=self.openai_base_url)
        self.azure = _fill(
            self.azure, api_key=self.azure_openai_api_key, endpoint=self.azure_openai_endpoint
        )
        self.azure.check_endpoints()
        self.anthropic = _fill(self.anthropic, api_key=self.anthropic_api_key)
        self.gemini = _fill(self.gemini, api_key=self.gemini_api_key)
        return self


ConfigT = TypeVar("ConfigT", OpenAIConfig, AzureOpenAIConfig, AnthropicConfig, GeminiConfig)


def _fill(config: ConfigT, **fallbacks: object) -> ConfigT:
    """Return `config` with unset fields taken from `fallbacks` (re-validated)."""
    updates = {
        name: value
        for name, value in fallbacks.items()
        if value is not None and getattr(config, name) is None
    }
    if not updates:
        return config
    return type(config).model_validate({**config.model_dump(), **updates})
