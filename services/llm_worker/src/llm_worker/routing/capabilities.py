"""What each deployment can do, and what a request needs.

A request that needs a capability its target lacks fails with `invalid_request`
naming the capability, before any provider is called.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from ferryman.contracts.llm import ImagePart, JsonSchemaFormat, UserMessage


class Capabilities(BaseModel):
    """Capabilities of one deployment (`provider/model`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    streaming: bool = True
    tools: bool = True
    parallel_tools: bool = True
    vision: bool = True
    json_schema: bool = True
    context_window: int | None = Field(default=None, ge=1)
    """Tokens of input the model accepts, when known."""
    max_output_tokens: int | None = Field(default=None, ge=1)
    """The largest `max_tokens` the model accepts, when known."""


_PROVIDER_DEFAULTS: dict[str, Capabilities] = {
    "mock": Capabilities(tools=False, parallel_tools=False, vision=False, json_schema=False),
}


class CapabilityTable:
    """Looks up capabilities by `provider/model`, then `provider/*`, then provider defaults.

    Args:
        configured: entries from configuration, keyed `provider/model` or `provider/*`.
    """

    def __init__(self, configured: Mapping[str, Capabilities]) -> None:
        self._configured = dict(configured)

    def lookup(self, provider: str, model: str) -> Capabilities:
        """Return the capabilities of `provider/model`."""
        for key in (f"{provider}/{model}", f"{provider}/*"):
            if key in self._configured:
                return self._configured[key]
        return _PROVIDER_DEFAULTS.get(provider, Capabilities())

    def check(self, request: ChatRequest, provider: str, model: str) -> None:
        """Ensure `provider/model` can serve `request`.

        Raises:
            FerrymanError: `invalid_request` naming the first missing capability.
        """
        self.check_against(request, self.lookup(provider, model), f"{provider}/{model}")

    @staticmethod
    def check_against(request: ChatRequest, have: Capabilities, target: str) -> None:
        """Ensure a deployment with capabilities `have` (named `target`) can serve `request`.

        Raises:
            FerrymanError: `invalid_request` naming the first missing capability.
        """
        for capability, reason in _needs(request, have):
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"{target} lacks the capability {capability!r} ({reason})",
                upstream=target.partition("/")[0],
            )


def _needs(request: ChatRequest, have: Capabilities) -> list[tuple[str, str]]:
    missing: list[tuple[str, str]] = []
    if request.stream and not have.streaming:
        missing.append(("streaming", "the request asks for stream=true"))
    if request.tools and not have.tools:
        missing.append(("tools", "the request offers tools"))
    if isinstance(request.response_format, JsonSchemaFormat) and not have.json_schema:
        missing.append(("json_schema", "the request asks for a JSON schema response_format"))
    if not have.vision and _has_images(request):
        missing.append(("vision", "the request contains images"))
    limit = have.max_output_tokens
    if limit is not None and request.max_tokens is not None and request.max_tokens > limit:
        missing.append(("max_output_tokens", f"max_tokens {request.max_tokens} > {limit}"))
    return missing


def _has_images(request: ChatRequest) -> bool:
    return any(
        isinstance(message, UserMessage)
        and not isinstance(message.content, str)
        and any(isinstance(part, ImagePart) for part in message.content)
        for message in request.messages
    )
