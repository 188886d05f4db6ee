"""The OpenAI provider (and any OpenAI-compatible server), over `openai.AsyncOpenAI`.

SDK retries are off (`max_retries=0`): retrying belongs to Ferryman.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator

import httpx2
import openai

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from llm_worker.providers.http_errors import RETRYABLE_CODES, code_for_status, parse_retry_after
from llm_worker.providers.openai_mapping import (
    ChunkMapper,
    completion_events,
    filtered_categories,
    to_openai_params,
)
from llm_worker.streaming import Completion, StreamEvent, fold_events

PROVIDER = "openai"


def create_client(
    *,
    api_key: str | None,
    base_url: str | None,
    timeout: float,
    connect_timeout: float,
    http_client: httpx2.AsyncClient | None = None,
) -> openai.AsyncOpenAI:
    """Build the SDK client with retries off and explicit timeouts."""
    return openai.AsyncOpenAI(
        # Local OpenAI-compatible servers take no key; the SDK insists on one.
        api_key=api_key or "unused",
        base_url=base_url,
        max_retries=0,
        timeout=httpx2.Timeout(timeout, connect=connect_timeout),
        http_client=http_client,
    )


class OpenAIChatModel:
    """Chat completions over the `openai` SDK (OpenAI, OpenAI-compatible servers, Azure).

    Args:
        client: a configured `AsyncOpenAI` or `AsyncAzureOpenAI` (see `create_client`).
        provider: the provider name reported in events and errors.
    """

    def __init__(self, client: openai.AsyncOpenAI, *, provider: str = PROVIDER) -> None:
        self._client = client
        self.provider = provider

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        """Stream the answer (text, tool-call fragments, usage, finish).

        Raises:
            FerrymanError: the call or the stream failed.
        """
        params = to_openai_params(request, model, stream=True)
        mapper = ChunkMapper()
        with map_errors(self.provider):
            # Plain dicts (cast_to=object): the SDK still decodes SSE, raises in-stream
            # errors, maps timeouts; it skips building a pydantic model per chunk (~100 µs).
            stream = await self._client.post(
                "/chat/completions",
                body=params,
                cast_to=object,
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
            async with stream:
                async for chunk in stream:
                    for event in mapper.events(chunk):
                        yield event
                    if mapper.complete:
                        break
        finish = mapper.finish()
        if finish is not None:
            yield finish

    async def generate(self, request: ChatRequest, model: str) -> Completion:
        """Return the whole answer from a non-streaming call.

        Raises:
            FerrymanError: the call failed or the answer was unfinished.
        """
        params = to_openai_params(request, model, stream=False)
        with map_errors(self.provider):
            completion = await self._client.chat.completions.create(**params)
        return fold_events(completion_events(completion))

    async def list_models(self) -> list[str]:
        """Return model ids from `GET /models` (unbilled).

        Raises:
            FerrymanError: the listing failed.
        """
        with map_errors(self.provider):
            page = await self._client.models.list()
            return sorted([model.id async for model in page])

    async def aclose(self) -> None:
        """Close the SDK client's connections."""
        await self._client.close()


@contextlib.contextmanager
def map_errors(provider: str = PROVIDER) -> Iterator[None]:
    """Translate `openai` SDK errors into `FerrymanError`, keeping status and retry-after.

    Raises:
        FerrymanError: for every SDK error raised inside the block.
    """
    try:
        yield
    except openai.APIStatusError as exc:
        raise _from_status(exc, provider) from exc
    except openai.APITimeoutError as exc:
        raise FerrymanError(
            ErrorCode.TIMEOUT, "request to OpenAI timed out", provider=provider
        ) from exc
    except openai.APIConnectionError as exc:
        raise FerrymanError(
            ErrorCode.UNAVAILABLE, f"cannot reach OpenAI: {exc.message}", provider=provider
        ) from exc
    except openai.APIError as exc:  # an error event inside an otherwise healthy stream
        raise FerrymanError(
            ErrorCode.UNAVAILABLE, f"OpenAI stream error: {exc.message}", provider=provider
        ) from exc
    except json.JSONDecodeError as exc:  # the SDK's SSE decoder lets these through
        raise FerrymanError(
            ErrorCode.UNAVAILABLE, "OpenAI sent a malformed stream event", provider=provider
        ) from exc
    except httpx2.HTTPError as exc:  # transport errors while iterating a stream
        raise FerrymanError(
            ErrorCode.UNAVAILABLE, f"OpenAI stream broke: {type(exc).__name__}", provider=provider
        ) from exc


def _from_status(exc: openai.APIStatusError, provider: str) -> FerrymanError:
    status = exc.status_code
    code_text = str(getattr(exc, "code", "") or "")
    message = f"OpenAI returned {status}: {exc.message}"
    retry_after = parse_retry_after(exc.response.headers)
    code = code_for_status(status)
    if code is ErrorCode.AUTH:
        # OpenAI echoes part of the key in this message; never forward it.
        message = f"OpenAI rejected the credentials ({status})"
    elif code in (ErrorCode.RATE_LIMITED, ErrorCode.TIMEOUT):
        pass  # the status says it all
    elif code_text == "context_length_exceeded":
        code = ErrorCode.CONTEXT_LENGTH
    elif code_text in ("content_filter", "content_policy_violation"):
        code = ErrorCode.CONTENT_FILTER
        if categories := error_filtered_categories(exc.body):
            message = f"{message} (filtered: {', '.join(categories)})"
    return FerrymanError(
        code,
        message,
        retryable=code in RETRYABLE_CODES,
        provider=provider,
        status=status,
        retry_after=retry_after,
    )


def error_filtered_categories(body: object) -> list[str]:
    """Categories an Azure/OpenAI content filter flagged, from an error body
    (`innererror.content_filter_result`)."""
    if not isinstance(body, dict):
        return []
    error = body.get("error", body)
    inner = error.get("innererror") if isinstance(error, dict) else None
    result = inner.get("content_filter_result") if isinstance(inner, dict) else None
    return filtered_categories(result)
