"""Azure OpenAI: chat completions per deployment, over `openai.AsyncAzureOpenAI`.

A request's model `azure/<alias>` names a configured deployment (or, when not
configured, the deployment of that name on the default endpoint). Each
deployment may live on its own regional endpoint (data residency); one client
is kept per endpoint and API version. The wire format is OpenAI's, so the
OpenAI adapter does the work; Azure's content-filter errors carry the
filtered categories (see `openai.filtered_categories`).

A deployment name is a path segment of the request URL: one that is not a plain
name (`../`, `?`, `%`, ...) is refused before anything is sent.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

import httpx2
import openai

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from llm_worker.chat.streaming import Completion, StreamEvent
from llm_worker.providers.config import AzureDeployment, AzureOpenAIConfig
from llm_worker.providers.http_pool import pooled_http_client
from llm_worker.providers.openai import DEFAULT_MAX_CONNECTIONS, OpenAIChatModel, map_errors

PROVIDER = "azure"
_ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
# Azure deployment names: letters, digits, `-`, `_` and `.`, starting with a letter or digit.
_DEPLOYMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def entra_token_provider() -> Callable[[], str]:
    """Return a Microsoft Entra ID token provider from `azure-identity`.

    Raises:
        RuntimeError: `azure-identity` is not installed.
    """
    try:
        from azure.identity import (  # type: ignore[import-not-found]
            DefaultAzureCredential,
            get_bearer_token_provider,
        )
    except ImportError as exc:
        raise RuntimeError(
            "azure.entra_id is set but azure-identity is not installed (pip install azure-identity)"
        ) from exc
    return get_bearer_token_provider(DefaultAzureCredential(), _ENTRA_SCOPE)  # type: ignore[no-any-return]


class AzureChatModel:
    """Routes `azure/<alias>` to its deployment and endpoint.

    Args:
        config: the validated Azure configuration.
        http_client: an `httpx2.AsyncClient` to share (tests inject a transport here);
            default: one pool of `max_connections` per endpoint, redirects off.
        token_provider: Entra ID token provider (default: built from `azure-identity` when
            `config.entra_id` is set).
        max_connections: each endpoint's pool size.
    """

    provider = PROVIDER

    def __init__(
        self,
        config: AzureOpenAIConfig,
        *,
        http_client: httpx2.AsyncClient | None = None,
        token_provider: Callable[[], str] | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self._config = config
        self._http_client = http_client
        self._max_connections = max_connections
        if config.entra_id and token_provider is None:
            token_provider = entra_token_provider()
        self._token_provider = token_provider
        self._models: dict[tuple[str, str], OpenAIChatModel] = {}

    def _deployment(self, alias: str) -> AzureDeployment:
        deployment = self._config.deployments.get(alias) or AzureDeployment(deployment=alias)
        if not _DEPLOYMENT_NAME.fullmatch(deployment.deployment):
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"azure deployment name {deployment.deployment!r} is not a plain name"
                " (letters, digits, '-', '_', '.')",
                upstream=PROVIDER,
            )
        return deployment

    def _model_for(self, deployment: AzureDeployment) -> OpenAIChatModel:
        endpoint = deployment.endpoint or self._config.endpoint
        api_version = deployment.api_version or self._config.api_version
        assert endpoint is not None  # guaranteed by AzureOpenAIConfig validation
        key = (endpoint, api_version)
        if key not in self._models:
            secret = self._config.api_key
            client = openai.AsyncAzureOpenAI(
                azure_endpoint=endpoint,
                api_version=api_version,
                api_key=secret.get_secret_value() if secret is not None else None,
                azure_ad_token_provider=self._token_provider,
                max_retries=0,
                timeout=httpx2.Timeout(self._config.timeout, connect=self._config.connect_timeout),
                http_client=self._http_client or pooled_http_client(self._max_connections),
            )
            self._models[key] = OpenAIChatModel(client, provider=PROVIDER)
        return self._models[key]

    def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        """Stream from the deployment behind alias `model`.

        Raises:
            FerrymanError: the call or the stream failed (content filter included).
        """
        deployment = self._deployment(model)
        return self._model_for(deployment).stream(request, deployment.deployment)

    async def generate(self, request: ChatRequest, model: str) -> Completion:
        """Return the whole answer from the deployment behind alias `model`.

        Raises:
            FerrymanError: the call failed.
        """
        deployment = self._deployment(model)
        return await self._model_for(deployment).generate(request, deployment.deployment)

    def server_address(self, model: str) -> str | None:
        """The host of the endpoint serving alias `model` (`server.address` of its spans)."""
        deployment = self._config.deployments.get(model)
        endpoint = (deployment.endpoint if deployment else None) or self._config.endpoint
        if not endpoint:
            return None
        return httpx2.URL(str(endpoint)).host or None

    async def list_models(self) -> list[str]:
        """Return the models of the default endpoint's resource (`GET /openai/models`, unbilled).

        Raises:
            FerrymanError: the listing failed.
        """
        first = next(iter(self._config.deployments.values()), None)
        probe = AzureDeployment(deployment="-", endpoint=None if first is None else first.endpoint)
        if self._config.endpoint is not None:
            probe = AzureDeployment(deployment="-")
        secret = self._config.api_key
        with map_errors(PROVIDER, (secret.get_secret_value() if secret is not None else None,)):
            return await self._model_for(probe).list_models()

    async def aclose(self) -> None:
        """Close every endpoint's client."""
        for model in self._models.values():
            await model.aclose()
