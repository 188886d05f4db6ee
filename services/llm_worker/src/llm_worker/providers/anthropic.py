"""The Anthropic provider (Messages API), over `anthropic.AsyncAnthropic`.

SDK retries are off (`max_retries=0`): retrying belongs to Ferryman. Redirects are
never followed, and every upstream message is redacted of credentials.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping

import anthropic
import httpx2

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from ferryman_runtime.upstreams.http_status import (
    code_for_status,
    is_redirect,
    parse_retry_after,
    redirect_error,
    scrubbed,
)
from llm_worker.chat.streaming import Completion, StreamEvent, fold
from llm_worker.providers.anthropic_mapping import (
    PROVIDER,
    EventMapper,
    SamplingPolicy,
    to_anthropic_params,
)
from llm_worker.providers.http_pool import pooled_http_client

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_MAX_CONNECTIONS = 10_000
"""Pool size when the caller names none: above any `max_in_flight` one process runs."""

# Anthropic reports an over-long prompt as a plain 400 `invalid_request_error`
# ("prompt is too long: 207791 tokens > 200000 maximum"; 413 "Request size exceeds
# model context window"): no `error.details.error_code` names it (anthropic 2.12's
# `ErrorDetails` has none), so the message is matched — a last resort.
_CONTEXT_LENGTH = re.compile(
    r"prompt is too long|context window|context length|exceeds? (the )?context limit", re.I
)

# In-stream `error` events arrive on a 200 response: their `error.type` decides.
_STREAM_ERROR_CODES: dict[str, ErrorCode] = {
    "overloaded_error": ErrorCode.UNAVAILABLE,
    "api_error": ErrorCode.UNAVAILABLE,
    "rate_limit_error": ErrorCode.RATE_LIMITED,
    "timeout_error": ErrorCode.TIMEOUT,
    "invalid_request_error": ErrorCode.INVALID_REQUEST,
    "not_found_error": ErrorCode.NOT_FOUND,
    "request_too_large": ErrorCode.TOO_LARGE,
    "authentication_error": ErrorCode.AUTH,
    "permission_error": ErrorCode.PERMISSION_DENIED,
    "billing_error": ErrorCode.AUTH,
}


def create_client(
    *,
    api_key: str | None,
    base_url: str | None,
    timeout: float,
    connect_timeout: float,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    http_client: httpx2.AsyncClient | None = None,
) -> anthropic.AsyncAnthropic:
    """Build the SDK client with retries off, explicit timeouts, redirects off and a pool
    of `max_connections` (unless `http_client`, caller-built, is given).

    The key and base URL are always passed explicitly so that the SDK never
    falls back to `ANTHROPIC_*` environment variables or on-disk profiles:
    settings are read once, by the worker's settings class.
    """
    return anthropic.AsyncAnthropic(
        # Anthropic-compatible local servers may take no key; the SDK insists on a credential.
        api_key=api_key or "unused",
        base_url=base_url or DEFAULT_BASE_URL,
        max_retries=0,
        timeout=httpx2.Timeout(timeout, connect=connect_timeout),
        http_client=http_client or pooled_http_client(max_connections),
    )


class AnthropicChatModel:
    """Chat completions over Anthropic's Messages API.

    Args:
        client: a configured `AsyncAnthropic` (see `create_client`).
        default_max_tokens: `max_tokens` for requests that set none (Anthropic requires one).
        max_tokens_by_model: per-model overrides of `default_max_tokens`.
        sampling: what to do with `temperature`/`top_p` (see `SamplingPolicy`).
        thinking_budget: tokens of extended thinking per request (None: thinking off).
    """

    provider = PROVIDER

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        *,
        default_max_tokens: int = 4096,
        max_tokens_by_model: Mapping[str, int] | None = None,
        sampling: SamplingPolicy = "reject",
        thinking_budget: int | None = None,
    ) -> None:
        self._client = client
        self._secrets = (client.api_key, client.auth_token)
        self._default_max_tokens = default_max_tokens
        self._max_tokens_by_model = dict(max_tokens_by_model or {})
        self._sampling: SamplingPolicy = sampling
        self._thinking_budget = thinking_budget

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        """Stream the answer (text, tool-call fragments, usage, finish).

        Raises:
            FerrymanError: the call or the stream failed, or the stream ended before
                Anthropic finished the answer.
        """
        params = to_anthropic_params(
            request,
            model,
            default_max_tokens=self._max_tokens_by_model.get(model, self._default_max_tokens),
            sampling=self._sampling,
            thinking_budget=self._thinking_budget,
        )
        mapper = EventMapper()
        with map_errors(self._secrets):
            # Raw events (not the `.stream()` helper, which accumulates a snapshot
            # message and adds synthetic events we would only skip).
            stream = await self._client.messages.create(**params, stream=True)
            async with stream:
                async for event in stream:
                    for out in mapper.events(event):
                        yield out
        closing = mapper.finish()
        if not closing and not mapper.finished:
            raise FerrymanError(
                ErrorCode.UNAVAILABLE,
                "Anthropic's stream ended before the answer was finished",
                retryable=True,
                upstream=PROVIDER,
            )
        for out in closing:
            yield out

    async def generate(self, request: ChatRequest, model: str) -> Completion:
        """Return the whole answer: the fold of `stream`.

        Streaming rather than a non-streaming call: the SDK refuses non-streaming
        calls whose `max_tokens` could take over 10 minutes, a long answer would hit
        the read timeout with nothing arriving, and one event mapper for both paths
        means they cannot drift.

        Raises:
            FerrymanError: the call failed or the answer was unfinished.
        """
        return await fold(self.stream(request, model))

    def server_address(self, model: str) -> str | None:
        """The host calls go to (`server.address` of their spans)."""
        return self._client.base_url.host or None

    async def list_models(self) -> list[str]:
        """Return model ids from `GET /v1/models` (unbilled; follows pagination).

        Raises:
            FerrymanError: the listing failed.
        """
        with map_errors(self._secrets):
            return sorted([model.id async for model in self._client.models.list()])

    async def aclose(self) -> None:
        """Close the SDK client's connections."""
        await self._client.close()


@contextlib.contextmanager
def map_errors(secrets: Iterable[str | None] = ()) -> Iterator[None]:
    """Translate `anthropic` SDK errors into `FerrymanError`, keeping status and retry-after,
    with `secrets` (and anything shaped like a credential) redacted from the message.

    Raises:
        FerrymanError: for every SDK or transport error raised inside the block.
    """
    try:
        yield
    except Exception as exc:
        error = _translate(exc)
        if error is None:
            raise
        # The SDK's exception holds the upstream body unredacted: never chain it.
        cause = None if isinstance(exc, anthropic.APIError) else exc
        raise scrubbed(error, secrets) from cause


def _translate(exc: Exception) -> FerrymanError | None:
    if isinstance(exc, anthropic.APIStatusError):
        # Below 400: an `error` event inside a 200 stream, or a redirect.
        if exc.status_code < 400 and not is_redirect(exc.status_code):
            return _from_stream_error(exc)
        return _from_status(exc)
    if isinstance(exc, anthropic.APITimeoutError):
        return FerrymanError(ErrorCode.TIMEOUT, "request to Anthropic timed out", upstream=PROVIDER)
    if isinstance(exc, anthropic.APIConnectionError):
        return FerrymanError(
            ErrorCode.UNAVAILABLE, f"cannot reach Anthropic: {exc.message}", upstream=PROVIDER
        )
    if isinstance(exc, anthropic.APIError):  # e.g. a response the SDK could not read
        return FerrymanError(
            ErrorCode.UNAVAILABLE, f"Anthropic error: {exc.message}", upstream=PROVIDER
        )
    if isinstance(exc, json.JSONDecodeError):  # the SDK's SSE decoder lets these through
        return FerrymanError(
            ErrorCode.UNAVAILABLE, "Anthropic sent a malformed stream event", upstream=PROVIDER
        )
    if isinstance(exc, httpx2.TimeoutException):  # a read timeout while iterating a stream
        return FerrymanError(ErrorCode.TIMEOUT, "Anthropic's stream stalled", upstream=PROVIDER)
    if isinstance(exc, httpx2.HTTPError):  # transport errors while iterating a stream
        return FerrymanError(
            ErrorCode.UNAVAILABLE,
            f"Anthropic stream broke: {type(exc).__name__}",
            upstream=PROVIDER,
        )
    return None


def _api_message(exc: anthropic.APIStatusError) -> str:
    message = exc.api_message
    return message if isinstance(message, str) and message else "no message"


def _from_status(exc: anthropic.APIStatusError) -> FerrymanError:
    status = exc.status_code
    if is_redirect(status):
        return redirect_error(PROVIDER, status, exc.response.headers)
    retry_after = parse_retry_after(exc.response.headers)
    detail = _api_message(exc)
    message = f"Anthropic returned {status}: {detail}"
    if status == 402:  # billing: the credentials cannot be used
        code = ErrorCode.AUTH
    elif status == 504:  # the gateway timed out waiting for the model
        code = ErrorCode.TIMEOUT
    elif status in (400, 413) and _CONTEXT_LENGTH.search(detail):
        code = ErrorCode.CONTEXT_LENGTH
    else:
        # 529 (`OverloadedError`) is unavailable like any 5xx
        code = code_for_status(status, conflict_is_transient=True)
    if code is ErrorCode.AUTH:
        # Fixed text: never risk echoing a credential.
        message = (
            f"Anthropic rejected the request for billing reasons ({status})"
            if status == 402
            else f"Anthropic rejected the credentials ({status})"
        )
    return FerrymanError(code, message, upstream=PROVIDER, status=status, retry_after=retry_after)


def _from_stream_error(exc: anthropic.APIStatusError) -> FerrymanError:
    kind = str(exc.type or "")
    detail = _api_message(exc)
    code = _STREAM_ERROR_CODES.get(kind, ErrorCode.UNAVAILABLE)
    if code is ErrorCode.INVALID_REQUEST and _CONTEXT_LENGTH.search(detail):
        code = ErrorCode.CONTEXT_LENGTH
    message = (
        f"Anthropic rejected the credentials mid-stream ({kind})"
        if code is ErrorCode.AUTH
        else f"Anthropic stream error ({kind or 'unknown'}): {detail}"
    )
    return FerrymanError(
        code, message, upstream=PROVIDER, retry_after=parse_retry_after(exc.response.headers)
    )
