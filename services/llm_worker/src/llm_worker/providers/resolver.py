"""Resolves a request's `model` (`provider/model` or an alias) to a provider client."""

from __future__ import annotations

from collections.abc import Mapping

from ferryman.contracts import ErrorCode, FerrymanError
from llm_worker.providers.port import ChatModel


class ModelResolver:
    """Resolves `provider/model` or a configured alias to a provider and a model name.

    Args:
        providers: configured providers by name.
        aliases: alias → `provider/model`.
    """

    def __init__(self, providers: Mapping[str, ChatModel], aliases: Mapping[str, str]) -> None:
        self._providers = dict(providers)
        self._aliases = dict(aliases)

    @property
    def providers(self) -> Mapping[str, ChatModel]:
        """The configured providers by name."""
        return self._providers

    def resolve(self, model: str) -> tuple[ChatModel, str]:
        """Return the provider and the provider's model name for `model`.

        Raises:
            FerrymanError: `invalid_request` when the alias or provider is unknown.
        """
        target = self._aliases.get(model, model)
        provider_name, sep, model_name = target.partition("/")
        if not sep or not model_name:
            known = ", ".join(sorted(self._aliases)) or "none"
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"model {model!r} is neither 'provider/model' nor a configured alias"
                f" (aliases: {known})",
            )
        provider = self._providers.get(provider_name)
        if provider is None:
            known = ", ".join(sorted(self._providers))
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"provider {provider_name!r} is not configured on this worker"
                f" (configured: {known})",
            )
        return provider, model_name

    async def aclose(self) -> None:
        """Close every provider."""
        for provider in self._providers.values():
            await provider.aclose()
