"""The provider port: what the worker needs from an LLM provider."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from ferryman.contracts import ChatRequest
from llm_worker.chat.streaming import Completion, StreamEvent


class ChatModel(Protocol):
    """An LLM provider. Errors surface as `FerrymanError`, mapped at the adapter's edge."""

    provider: str
    """The provider's name, the part before `/` in `provider/model`."""

    def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        """Stream the answer to `request` from `model`.

        Raises:
            FerrymanError: the provider failed, before or during the stream.
        """
        ...

    async def generate(self, request: ChatRequest, model: str) -> Completion:
        """Return the whole answer to `request` from `model`.

        Raises:
            FerrymanError: the provider failed.
        """
        ...

    async def list_models(self) -> list[str]:
        """Return the models the provider offers (an unbilled listing call).

        Raises:
            FerrymanError: the provider failed.
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
