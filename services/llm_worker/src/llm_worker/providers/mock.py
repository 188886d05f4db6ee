"""The `mock` provider: deterministic answers with no key and no network.

`mock/echo` streams back "You said: <last user message>" word by word. It
serves the demo and producers' own tests.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from ferryman.contracts.llm import TextPart, UserMessage
from llm_worker.chat.streaming import Completion, Finish, StreamEvent, TextDelta, UsageReport, fold

_TOKEN = re.compile(r"\s*\S+")
_MODELS = ("echo",)


class MockChatModel:
    """Echoes the last user message, one word per chunk.

    Args:
        token_delay: seconds between tokens (0 for tests, a little for demos).
    """

    provider = "mock"

    def __init__(self, token_delay: float = 0.0) -> None:
        self._token_delay = token_delay

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        """Stream the echo answer.

        Raises:
            FerrymanError: `not_found` for a model other than `echo`.
        """
        if model not in _MODELS:
            raise FerrymanError(
                ErrorCode.NOT_FOUND,
                f"mock has no model {model!r} (models: echo)",
                upstream="mock",
            )
        answer = f"You said: {_last_user_text(request)}"
        tokens = _TOKEN.findall(answer)
        for token in tokens:
            if self._token_delay:
                await asyncio.sleep(self._token_delay)
            yield TextDelta(text=token)
        input_tokens = sum(len(_TOKEN.findall(_text_of(m))) for m in request.messages)
        yield UsageReport(input_tokens=input_tokens, output_tokens=len(tokens))
        yield Finish(reason="stop", model=model)

    async def generate(self, request: ChatRequest, model: str) -> Completion:
        """Return the echo answer at once.

        Raises:
            FerrymanError: `not_found` for a model other than `echo`.
        """
        return await fold(self.stream(request, model))

    async def list_models(self) -> list[str]:
        """Return the mock's models."""
        return list(_MODELS)

    async def aclose(self) -> None:
        """Nothing to release."""


def _text_of(message: object) -> str:
    content = getattr(message, "content", None)
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return " ".join(part.text for part in content if isinstance(part, TextPart))


def _last_user_text(request: ChatRequest) -> str:
    for message in reversed(request.messages):
        if isinstance(message, UserMessage):
            return _text_of(message)
    return ""
