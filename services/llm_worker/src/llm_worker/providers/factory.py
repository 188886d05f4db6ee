"""Provider clients from settings: the worker's one client per provider, and dedicated
clients for deployments that name their own endpoint or credentials.

Provider SDKs are imported only when used: each costs tens of MB of memory. Each
client's connection pool is sized so that every call in flight can hold a connection.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from pydantic import SecretStr

from llm_worker.providers.config import (
    AnthropicConfig,
    AzureOpenAIConfig,
    GeminiConfig,
    OpenAIConfig,
)
from llm_worker.providers.mock import MockChatModel
from llm_worker.providers.openai import OpenAIChatModel, create_client
from llm_worker.providers.port import ChatModel
from llm_worker.routing.config import Deployment
from llm_worker.settings import LlmWorkerSettings

PROBE_CONNECTIONS = 8
"""Pool room beyond `max_in_flight`, for health probes (model listings) beside full load."""


def build_providers(settings: LlmWorkerSettings) -> dict[str, ChatModel]:
    """Create the providers the settings enable (`mock` always).

    Raises:
        RuntimeError: a provider's configuration cannot be used (e.g. Entra ID without
            azure-identity).
    """
    providers: dict[str, ChatModel] = {
        "mock": MockChatModel(token_delay=settings.mock_token_delay_ms / 1000.0)
    }
    in_flight = settings.max_in_flight
    if settings.openai.enabled:
        providers["openai"] = openai_client(settings.openai, in_flight)
    if settings.azure.enabled:
        providers["azure"] = azure_client(settings.azure, in_flight)
    if settings.anthropic.enabled:
        providers["anthropic"] = anthropic_client(settings.anthropic, in_flight)
    if settings.gemini.api_key is not None:
        providers["gemini"] = gemini_client(settings.gemini, in_flight)
    return providers


def dedicated_client(settings: LlmWorkerSettings, deployment: Deployment) -> ChatModel | None:
    """A client for `deployment` when it names its own endpoint or credentials, else None.

    Raises:
        ValueError: its credentials cannot be read, or its provider has no such options.
    """
    if deployment.endpoint is None and deployment.credentials is None:
        return None
    key = read_credentials(deployment.credentials) if deployment.credentials else None
    provider, endpoint, in_flight = deployment.provider, deployment.endpoint, settings.max_in_flight
    if provider == "openai":
        return openai_client(_override(settings.openai, key, base_url=endpoint), in_flight)
    if provider == "azure":
        return azure_client(_override(settings.azure, key, endpoint=endpoint), in_flight)
    if provider == "anthropic":
        return anthropic_client(_override(settings.anthropic, key, base_url=endpoint), in_flight)
    if provider == "gemini":
        return gemini_client(_override(settings.gemini, key, base_url=endpoint), in_flight)
    raise ValueError(f"provider {provider!r} takes no endpoint or credentials")


def read_credentials(reference: str) -> SecretStr:
    """Resolve `env:VARIABLE` or `file:/path` to the key it names (never logged).

    Raises:
        ValueError: the variable is unset or empty, or the file cannot be read.
    """
    kind, _, where = reference.partition(":")
    if kind == "env":
        value = os.environ.get(where, "").strip()
        if not value:
            raise ValueError(f"credentials variable {where} is not set")
        return SecretStr(value)
    try:
        value = Path(where).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read credentials file {where} ({exc.strerror})") from exc
    if not value:
        raise ValueError(f"credentials file {where} is empty")
    return SecretStr(value)


ConfigT = TypeVar("ConfigT", OpenAIConfig, AzureOpenAIConfig, AnthropicConfig, GeminiConfig)


def _override(config: ConfigT, key: SecretStr | None, **fields: str | None) -> ConfigT:
    updates: dict[str, object] = {name: v for name, v in fields.items() if v is not None}
    if key is not None:
        updates["api_key"] = key
    return config.model_copy(update=updates)


def pool_size(
    config: OpenAIConfig | AzureOpenAIConfig | AnthropicConfig | GeminiConfig, max_in_flight: int
) -> int:
    """The connection pool of a provider client: `config.max_connections` when set, else
    one connection per call in flight plus `PROBE_CONNECTIONS`."""
    if config.max_connections is not None:
        return config.max_connections
    return max_in_flight + PROBE_CONNECTIONS


def openai_client(config: OpenAIConfig, max_in_flight: int) -> ChatModel:
    """An OpenAI (or OpenAI-compatible) client."""
    key = config.api_key
    client = create_client(
        api_key=key.get_secret_value() if key else None,
        base_url=config.base_url,
        timeout=config.timeout,
        connect_timeout=config.connect_timeout,
        max_connections=pool_size(config, max_in_flight),
        organization=config.organization,
    )
    return OpenAIChatModel(client)


def azure_client(config: AzureOpenAIConfig, max_in_flight: int) -> ChatModel:
    """An Azure OpenAI client.

    Raises:
        RuntimeError: Entra ID is configured without azure-identity installed.
    """
    from llm_worker.providers.azure import AzureChatModel

    return AzureChatModel(config, max_connections=pool_size(config, max_in_flight))


def anthropic_client(config: AnthropicConfig, max_in_flight: int) -> ChatModel:
    """An Anthropic client."""
    from llm_worker.providers.anthropic import AnthropicChatModel
    from llm_worker.providers.anthropic import create_client as create_anthropic_client

    key = config.api_key
    client = create_anthropic_client(
        api_key=key.get_secret_value() if key else None,
        base_url=config.base_url,
        timeout=config.timeout,
        connect_timeout=config.connect_timeout,
        max_connections=pool_size(config, max_in_flight),
    )
    return AnthropicChatModel(
        client,
        default_max_tokens=config.default_max_tokens,
        max_tokens_by_model=config.max_tokens_by_model,
        sampling=config.sampling,
        thinking_budget=config.thinking_budget_tokens,
    )


def gemini_client(config: GeminiConfig, max_in_flight: int) -> ChatModel:
    """A Gemini client.

    Raises:
        ValueError: no API key is configured.
    """
    from llm_worker.providers.gemini import GeminiChatModel
    from llm_worker.providers.gemini import create_client as create_gemini_client
    from llm_worker.providers.gemini_cache import GeminiCacheSettings

    if config.api_key is None:
        raise ValueError("gemini needs an API key")
    client = create_gemini_client(
        api_key=config.api_key.get_secret_value(),
        base_url=config.base_url,
        api_version=config.api_version or "v1",
        timeout=config.timeout,
        max_connections=pool_size(config, max_in_flight),
    )
    cache = GeminiCacheSettings(
        ttl_short=config.cache_ttl_short,
        ttl_long=config.cache_ttl_long,
        max_entries=config.cache_max_entries,
        idle=config.cache_idle,
        min_tokens=dict(config.cache_min_tokens),
    )
    return GeminiChatModel(client, safety_settings=config.safety_settings, cache=cache)
