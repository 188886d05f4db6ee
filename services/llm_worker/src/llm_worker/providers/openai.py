"""The OpenAI provider (and any OpenAI-compatible server), over `openai.AsyncOpenAI`.

SDK retries are off (`max_retries=0`): retrying belongs to Ferryman. Redirects are
never followed, and every upstream message is redacted of credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Iterator

import httpx2
import openai

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from ferryman_runtime.upstreams.http_status import (
    code_for_status,
    is_redirect,
    parse_retry_after,
    redirect_error,
    scrubbed,
)
from llm_worker.chat.streaming import Completion, StreamEvent, fold_events
from llm_worker.providers.http_pool import pooled_http_client
from llm_worker.providers.openai_mapping import (
    ChunkMapper,
    completion_events,
    filtered_categories,
    to_openai_params,
)

PROVIDER = "openai"

DEFAULT_MAX_CONNECTIONS = 10_000
"""Pool size when the caller names none: above any `max_in_flight` one process runs."""

DRAIN_SECONDS = 0.5
"""How long a finished stream may take to reach its end (`[DONE]`) so that its connection
returns to the pool; a server that holds the response open past it loses the connection
rather than holding the request."""


def create_client(
    *,
    api_key: str | None,
    base_url: str | None,
    timeout: float,
    connect_timeout: float,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    http_client: httpx2.AsyncClient | None = None,
    organization: str | None = None,
) -> openai.AsyncOpenAI:
    """Build the SDK client with retries off, explicit timeouts, redirects off and a pool
    of `max_connections` (unless `http_client`, caller-built, is given)."""
    return openai.AsyncOpenAI(
        # Local OpenAI-compatible servers take no key; the SDK insists on one.
        api_key=api_key or "unused",
        base_url=base_url,
        organization=organization,
        max_retries=0,
        timeout=httpx2.Timeout(timeout, connect=connect_timeout),
        http_client=http_client or pooled_http_client(max_connections),
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
        self._secrets = (client.api_key,)

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return map_errors(self.provider, self._secrets)

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        """Stream the answer (text, tool-call fragments, usage, finish).

        Raises:
            FerrymanError: the call or the stream failed.
        """
        params = to_openai_params(request, model, stream=True)
        mapper = ChunkMapper()
        with self._errors():
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
                        await _drain(stream)
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
        with self._errors():
            completion = await self._client.chat.completions.create(**params)
        return fold_events(completion_events(completion))

    def server_address(self, model: str) -> str | None:
        """The host calls go to (`server.address` of their spans)."""
        return self._client.base_url.host or None

    async def list_models(self) -> list[str]:
        """Return model ids from `GET /models` (unbilled).

        Raises:
            FerrymanError: the listing failed.
        """
        with self._errors():
            page = await self._client.models.list()
            return sorted([model.id async for model in page])

    async def aclose(self) -> None:
        """Close the SDK client's connections."""
        await self._client.close()


async def _drain(stream: openai.AsyncStream[object]) -> None:
    """Read a finished stream to its end, within `DRAIN_SECONDS`, to keep its connection.

    The answer is complete: whatever the rest holds or however it fails is of no account.
    """
    with contextlib.suppress(TimeoutError, openai.APIError, httpx2.HTTPError, ValueError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in stream:
                pass


@contextlib.contextmanager
def map_errors(provider: str = PROVIDER, secrets: Iterable[str | None] = ()) -> Iterator[None]:
    """Translate `openai` SDK errors into `FerrymanError`, keeping status and retry-after,
    with `secrets` (and anything shaped like a credential) redacted from the message.

    Raises:
        FerrymanError: for every SDK or transport error raised inside the block.
    """
    try:
        yield
    except Exception as exc:
        error = _translate(exc, provider)
        if error is None:
            raise
        # The SDK's exception holds the upstream body unredacted: never chain it.
        cause = None if isinstance(exc, openai.APIError) else exc
        raise scrubbed(error, secrets) from cause


def _translate(exc: Exception, provider: str) -> FerrymanError | None:
    if isinstance(exc, openai.APIStatusError):
        return _from_status(exc, provider)
    if isinstance(exc, openai.APITimeoutError):
        return FerrymanError(ErrorCode.TIMEOUT, "request to OpenAI timed out", upstream=provider)
    if isinstance(exc, openai.APIConnectionError):
        return FerrymanError(
            ErrorCode.UNAVAILABLE, f"cannot reach OpenAI: {exc.message}", upstream=provider
        )
    if isinstance(exc, openai.APIError):  # an error event inside an otherwise healthy stream
        return FerrymanError(
            ErrorCode.UNAVAILABLE, f"OpenAI stream error: {exc.message}", upstream=provider
        )
    if isinstance(exc, json.JSONDecodeError):  # the SDK's SSE decoder lets these through
        return FerrymanError(
            ErrorCode.UNAVAILABLE, "OpenAI sent a malformed stream event", upstream=provider
        )
    if isinstance(exc, httpx2.HTTPError):  # transport errors while iterating a stream
        return FerrymanError(
            ErrorCode.UNAVAILABLE, f"OpenAI stream broke: {type(exc).__name__}", upstream=provider
        )
    return None


def _from_status(exc: openai.APIStatusError, provider: str) -> FerrymanError:
    status = exc.status_code
    if is_redirect(status):
        return redirect_error(provider, status, exc.response.headers)
    code_text = str(getattr(exc, "code", "") or "")
    message = f"OpenAI returned {status}: {exc.message}"
    retry_after = parse_retry_after(exc.response.headers)
    code = code_for_status(status, conflict_is_transient=True)
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
    return FerrymanError(code, message, upstream=provider, status=status, retry_after=retry_after)


def error_filtered_categories(body: object) -> list[str]:
    """Categories an Azure/OpenAI content filter flagged, from an error body
    (`innererror.content_filter_result`)."""
    if not isinstance(body, dict):
        return []
    error = body.get("error", body)
    inner = error.get("innererror") if isinstance(error, dict) else None
    result = inner.get("content_filter_result") if isinstance(inner, dict) else None
    return filtered_categories(result)
