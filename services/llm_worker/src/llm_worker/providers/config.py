"""Configuration of each LLM provider: one pydantic model per provider, validated at startup.

Credentials are `SecretStr`, given directly or as a file path (`*_file`, e.g. a
mounted secret); they are never logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _KeyedConfig(_Config):
    """A provider configuration with an API key, given directly or as a file path."""

    _name: ClassVar[str]

    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    """A file holding the key (e.g. a mounted secret); read at startup when `api_key` is unset."""

    @model_validator(mode="after")
    def _load_key_file(self) -> Self:
        path = self.api_key_file
        if self.api_key is not None or path is None:
            return self
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(
                f"{self._name}: cannot read the key file {path} ({exc.strerror})"
            ) from exc
        if not text:
            raise ValueError(f"{self._name}: the key file {path} is empty")
        self.api_key = SecretStr(text)
        return self


class _ProviderConfig(_KeyedConfig):
    """A provider configuration: a key, and the size of the client's connection pool."""

    max_connections: int | None = Field(default=None, ge=1)
    """Connections the provider's client may open at once (each open stream holds one).
    Default: the worker's `max_in_flight` plus room for health probes, so that every
    call in flight can reach the provider; set it lower for a server that takes fewer."""


class OpenAIConfig(_ProviderConfig):
    """OpenAI, or any OpenAI-compatible server (vLLM, Ollama, …) via `base_url`."""

    _name: ClassVar[str] = "openai"

    base_url: str | None = None
    """For example `http://localhost:11434/v1`; enables the provider without a key."""
    organization: str | None = None
    timeout: float = Field(default=600.0, gt=0)
    """Seconds a call may take in all."""
    connect_timeout: float = Field(default=10.0, gt=0)

    @property
    def enabled(self) -> bool:
        """Whether requests for `openai/...` can be served."""
        return self.api_key is not None or self.base_url is not None


class AzureDeployment(_Config):
    """One Azure OpenAI deployment, addressed as `azure/<alias>`."""

    deployment: str
    """The deployment name in the Azure resource."""
    endpoint: str | None = None
    """A regional endpoint for this deployment (data residency); default: the provider's."""
    api_version: str | None = None
    """Overrides the provider's `api_version` for this deployment."""


class AzureOpenAIConfig(_ProviderConfig):
    """Azure OpenAI: an endpoint, an API version and deployments per model alias."""

    _name: ClassVar[str] = "azure"

    endpoint: str | None = None
    """`https://<resource>.openai.azure.com`."""
    api_version: str = "2024-10-21"
    entra_id: bool = False
    """Authenticate with Microsoft Entra ID (needs `azure-identity` installed), not a key."""
    deployments: dict[str, AzureDeployment] = Field(default_factory=dict)
    """Alias → deployment; an alias without an entry is used as the deployment name."""
    timeout: float = Field(default=600.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> AzureOpenAIConfig:
        if self.api_key is not None and self.entra_id:
            raise ValueError("azure: set either an API key or entra_id, not both")
        return self

    def check_endpoints(self) -> None:
        """Ensure every deployment has an endpoint (its own or the provider's).

        Raises:
            ValueError: some deployment has none.
        """
        orphans = sorted(a for a, d in self.deployments.items() if d.endpoint is None)
        if self.endpoint is None and orphans:
            raise ValueError(
                f"azure: deployments {orphans} need an endpoint (or set azure.endpoint)"
            )

    @property
    def enabled(self) -> bool:
        """Whether requests for `azure/...` can be served."""
        reachable = self.endpoint is not None or bool(self.deployments)
        return reachable and (self.api_key is not None or self.entra_id)


class AnthropicConfig(_ProviderConfig):
    """Anthropic's Messages API."""

    _name: ClassVar[str] = "anthropic"

    base_url: str | None = None
    default_max_tokens: int = Field(default=4096, ge=1)
    """`max_tokens` when the request sets none (Anthropic requires one)."""
    max_tokens_by_model: dict[str, int] = Field(default_factory=dict)
    """Per-model `max_tokens` defaults, e.g. `{"claude-haiku-4-5": 8192}`."""
    thinking_budget_tokens: int | None = Field(default=None, ge=1024)
    """Enable extended thinking with this budget (Anthropic's minimum is 1024)."""
    sampling: Literal["reject", "drop", "send"] = "reject"
    """What to do with `temperature`/`top_p`, which the current Anthropic API rejects:
    fail the request (`reject`), leave them out (`drop`), or send them anyway (`send`, for
    Anthropic-compatible servers that accept them)."""
    timeout: float = Field(default=600.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)

    @property
    def enabled(self) -> bool:
        """Whether requests for `anthropic/...` can be served."""
        return self.api_key is not None


class GeminiConfig(_ProviderConfig):
    """Google Gemini through `google-genai`."""

    _name: ClassVar[str] = "gemini"

    base_url: str | None = None
    api_version: str | None = None
    """API version path (`v1`, `v1beta`); default: the SDK's."""
    safety_settings: dict[str, str] = Field(default_factory=dict)
    """Harm category → threshold, e.g. `{"HARM_CATEGORY_HARASSMENT": "BLOCK_ONLY_HIGH"}`."""
    timeout: float = Field(default=600.0, gt=0)
    cache_ttl_short: int = Field(default=300, ge=60)
    """Seconds a cached content lives for `short` retention (or a `5m` breakpoint)."""
    cache_ttl_long: int = Field(default=3600, ge=60)
    """Seconds a cached content lives for `long` retention (or a `1h` breakpoint)."""
    cache_max_entries: int = Field(default=256, ge=1)
    """Cached contents one client keeps at most (the least recently used is deleted)."""
    cache_idle: float = Field(default=120.0, gt=0)
    """Seconds a cached content may go unused before it is deleted (storage is billed)."""
    cache_min_tokens: dict[str, int] = Field(default_factory=dict)
    """Model pattern → smallest prefix (estimated tokens) worth a cached content, e.g.
    `{"gemini-2.5-flash*": 1024}`; checked before the built-in table (`gemini_prefix`)."""

    @property
    def enabled(self) -> bool:
        """Whether requests for `gemini/...` can be served."""
        return self.api_key is not None
