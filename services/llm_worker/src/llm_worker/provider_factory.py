"""Provider clients from settings: the worker's one client per provider, and dedicated
clients for deployments that name their own endpoint or credentials.

Provider SDKs are imported only when used: each costs tens of MB of memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from pydantic import SecretStr

from llm_worker.ports import ChatModel
from llm_worker.provider_config import (
    AnthropicConfig,
    AzureOpenAIConfig,
    GeminiConfig,
    OpenAIConfig,
)
from llm_worker.providers.mock import MockChatModel
from llm_worker.providers.openai import OpenAIChatModel, create_client
from llm_worker.routing import Deployment
from llm_worker.settings import LlmWorkerSettings


def build_providers(settings: LlmWorkerSettings) -> dict[str, ChatModel]:
    """Create the providers the settings enable (`mock` always).

    Raises:
        RuntimeError: a provider's configuration cannot be used (e.g. Entra ID without
            azure-identity).
    """
    providers: dict[str, ChatModel] = {
        "mock": MockChatModel(token_delay=settings.mock_token_delay_ms / 1000.0)
    }
    if settings.openai.enabled:
        providers["openai"] = openai_client(settings.openai)
    if settings.azure.enabled:
        providers["azure"] = azure_client(settings.azure)
    if settings.anthropic.enabled:
        providers["anthropic"] = anthropic_client(settings.anthropic)
    if settings.gemini.api_key is not None:
        providers["gemini"] = gemini_client(settings.gemini)
    return providers


def dedicated_client(settings: LlmWorkerSettings, deployment: Deployment) -> ChatModel | None:
    """A client for `deployment` when it names its own endpoint or credentials, else None.

    Raises:
        ValueError: its credentials cannot be read, or its provider has no such options.
    """
    if deployment.endpoint is None and deployment.credentials is None:
        return None
    key = read_credentials(deployment.credentials) if deployment.credentials else None
    provider = deployment.provider
    if provider == "openai":
        config = _override(settings.openai, key, base_url=deployment.endpoint)
        return openai_client(config)
    if provider == "azure":
        config = _override(settings.azure, key, endpoint=deployment.endpoint)
        return azure_client(config)
    if provider == "anthropic":
        return anthropic_client(_override(settings.anthropic, key, base_url=deployment.endpoint))
    if provider == "gemini":
        return gemini_client(_override(settings.gemini, key, base_url=deployment.endpoint))
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


def openai_client(config: OpenAIConfig) -> ChatModel:
    """An OpenAI (or OpenAI-compatible) client."""
    key = config.api_key
    client = create_client(
        api_key=key.get_secret_value() if key else None,
        base_url=config.base_url,
        timeout=config.timeout,
        connect_timeout=config.connect_timeout,
    )
    return OpenAIChatModel(client)


def azure_client(config: AzureOpenAIConfig) -> ChatModel:
    """An Azure OpenAI client.

    Raises:
        RuntimeError: Entra ID is configured without azure-identity installed.
    """
    from llm_worker.providers.azure import AzureChatModel

    return AzureChatModel(config)


def anthropic_client(config: AnthropicConfig) -> ChatModel:
    """An Anthropic client."""
    from llm_worker.providers.anthropic import AnthropicChatModel
    from llm_worker.providers.anthropic import create_client as create_anthropic_client

    key = config.api_key
    client = create_anthropic_client(
        api_key=key.get_secret_value() if key else None,
        base_url=config.base_url,
        timeout=config.timeout,
        connect_timeout=config.connect_timeout,
    )
    return AnthropicChatModel(
        client,
        default_max_tokens=config.default_max_tokens,
        max_tokens_by_model=config.max_tokens_by_model,
        sampling=config.sampling,
        thinking_budget=config.thinking_budget_tokens,
    )


def gemini_client(config: GeminiConfig) -> ChatModel:
    """A Gemini client.

    Raises:
        ValueError: no API key is configured.
    """
    from llm_worker.providers.gemini import GeminiChatModel
    from llm_worker.providers.gemini import create_client as create_gemini_client

    if config.api_key is None:
        raise ValueError("gemini needs an API key")
    client = create_gemini_client(
        api_key=config.api_key.get_secret_value(),
        base_url=config.base_url,
        api_version=config.api_version or "v1",
        timeout=config.timeout,
    )
    return GeminiChatModel(client, safety_settings=config.safety_settings)
