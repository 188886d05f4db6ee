"""The Google Gemini provider (Gemini Developer API), over `google-genai`'s async client.

Nothing retries behind Ferryman's back:

- the SDK's retries are off by default (no `retry_options`);
- the async transport is pinned to `httpx2` (an explicit transport): the SDK
  would otherwise pick aiohttp whenever it is importable, whose path silently
  retries a failed connection once after sleeping 1-10 s, and whose timeout is a
  deadline for the whole stream instead of a limit between bytes;
- the SDK's automatic continuation (which also reconnects dropped streams) is
  off; the adapter follows a `CONTINUATION` finish reason's token itself.

Redirects are never followed, every upstream message is redacted of credentials, and
a model name that is not a plain name (it becomes a URL path segment) is refused
before anything is sent.

Safety settings: a deployment default (`safety_settings=`) merged per request
with `metadata["gemini_safety"]` (see `gemini_request`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Mapping
from typing import Any, cast

import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from ferryman_runtime.upstreams.http_status import (
    code_for_status,
    is_redirect,
    parse_retry_after,
    redirect_error,
    scrubbed,
)
from llm_worker.chat.streaming import Completion, StreamEvent, fold_events
from llm_worker.providers.gemini_request import (
    PROVIDER,
    parse_safety_settings,
    to_gemini_request,
)
from llm_worker.providers.gemini_response import ResponseMapper

try:  # aiohttp is optional; the client built here never uses it, a caller's might.
    import aiohttp

    _AIOHTTP_ERRORS: tuple[type[Exception], ...] = (aiohttp.ClientError,)
except ImportError:  # pragma: no cover - depends on the environment
    _AIOHTTP_ERRORS = ()

MAX_HOPS = 32
"""Most requests one answer may take when Gemini pauses it with continuation tokens."""

_CONTEXT_LENGTH = re.compile(r"input token count.*exceeds", re.IGNORECASE | re.DOTALL)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)s\s*$")
# What the SDK accepts as a model (`gemini-2.5-flash`, `models/…`, `tunedModels/…`), with
# nothing that would change the request URL's path or query.
_MODEL_NAME = re.compile(r"(?:models/|tunedModels/)?[A-Za-z0-9][A-Za-z0-9._-]*")

DEFAULT_MAX_CONNECTIONS = 10_000
"""Pool size when the caller names none: above any `max_in_flight` one process runs."""


def create_client(
    *,
    api_key: str,
    base_url: str | None = None,
    api_version: str | None = "v1",
    timeout: float,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    http_client: httpx2.AsyncClient | None = None,
) -> genai.Client:
    """Build the SDK client: Gemini Developer API, no retries, httpx2 transport, redirects off.

    Args:
        api_key: the Gemini API key (sent as `x-goog-api-key`).
        base_url: another endpoint (a proxy, a fake); None for Google's.
        api_version: the API version path segment (`v1`, `v1beta`); passed
            explicitly so `GOOGLE_GENAI_API_VERSION` in the environment is ignored.
        timeout: seconds each connect, read (between stream bytes) and write may take.
        max_connections: the connection pool's size (one connection per concurrent call;
            all may stay alive between calls).
        http_client: a caller-owned `httpx2.AsyncClient` (the caller closes it, and decides
            about redirects).
    """
    options = types.HttpOptions(
        base_url=base_url,
        api_version=api_version,
        # Milliseconds; the SDK sends it with every request (and as X-Server-Timeout).
        timeout=max(1, round(timeout * 1000)),
    )
    if http_client is not None:
        options.httpx_async_client = http_client
    else:
        # An explicit transport makes the SDK use (and own, and close) an httpx2 client.
        limits = httpx2.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        options.async_client_args = {
            "transport": httpx2.AsyncHTTPTransport(limits=limits),
            # The SDK follows redirects by default: the prompt and the key would follow.
            "follow_redirects": False,
        }
    # `vertexai=False`: never switch to Vertex AI because of GOOGLE_GENAI_USE_VERTEXAI.
    return genai.Client(api_key=api_key, vertexai=False, http_options=options)


class GeminiChatModel:
    """Gemini chat over `client.aio.models.generate_content(_stream)`.

    Args:
        client: a configured `genai.Client` (see `create_client`).
        safety_settings: deployment default harm category → threshold, e.g.
            `{"HARM_CATEGORY_HARASSMENT": "BLOCK_ONLY_HIGH"}`; requests may override
            categories with `metadata["gemini_safety"]`.

    Raises:
        ValueError: an unknown category or threshold in `safety_settings`.
    """

    provider = PROVIDER

    def __init__(
        self, client: genai.Client, *, safety_settings: Mapping[str, str] | None = None
    ) -> None:
        self._client = client
        self._secrets = (client._api_client.api_key,)  # pyright: ignore[reportPrivateUsage]
        self._safety = parse_safety_settings(safety_settings or {}, source="safety_settings")

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        """Stream the answer (text, one fragment per tool call, usage, finish).

        Raises:
            FerrymanError: the request cannot be expressed, or the call or the stream failed.
        """
        check_model_name(model)
        contents, config = to_gemini_request(request, safety_settings=self._safety)
        mapper = ResponseMapper()
        models = self._client.aio.models
        with map_errors(self._secrets):
            for _ in range(MAX_HOPS):
                chunks = await models.generate_content_stream(
                    model=model, contents=cast(Any, contents), config=config
                )
                # Closing the SDK's generator releases the connection if we stop early.
                async with contextlib.aclosing(
                    cast(AsyncGenerator[types.GenerateContentResponse, None], chunks)
                ) as hop:
                    async for chunk in hop:
                        for event in mapper.events(chunk):
                            yield event
                token = mapper.next_hop()
                if token is None:
                    break
                config = config.model_copy(update={"continuation_token": token})
        for event in mapper.final_events():
            yield event

    async def generate(self, request: ChatRequest, model: str) -> Completion:
        """Return the whole answer from non-streaming calls, mapped like the stream.

        Raises:
            FerrymanError: the call failed or the answer was unfinished.
        """
        check_model_name(model)
        contents, config = to_gemini_request(request, safety_settings=self._safety)
        mapper = ResponseMapper()
        events: list[StreamEvent] = []
        with map_errors(self._secrets):
            for _ in range(MAX_HOPS):
                response = await self._client.aio.models.generate_content(
                    model=model, contents=cast(Any, contents), config=config
                )
                events.extend(mapper.events(response))
                token = mapper.next_hop()
                if token is None:
                    break
                config = config.model_copy(update={"continuation_token": token})
        events.extend(mapper.final_events())
        return fold_events(events)

    async def list_models(self) -> list[str]:
        """Return model names without the `models/` prefix (`GET /models`, unbilled).

        Raises:
            FerrymanError: the listing failed.
        """
        with map_errors(self._secrets):
            pager = await self._client.aio.models.list()
            names = [model.name async for model in pager if model.name]
        return sorted(name.removeprefix("models/") for name in names)

    async def aclose(self) -> None:
        """Close the SDK's connection pools (not a caller-owned `http_client`)."""
        await self._client.aio.aclose()
        self._client.close()


def check_model_name(model: str) -> None:
    """Refuse a model name that would change the request URL (`../x`, `x?alt=`, `a/b`).

    Raises:
        FerrymanError: `invalid_request` for such a name.
    """
    if not _MODEL_NAME.fullmatch(model):
        raise FerrymanError(
            ErrorCode.INVALID_REQUEST,
            f"gemini model name {model!r} is not a plain model name"
            " (letters, digits, '-', '_', '.'; optionally after 'models/')",
            upstream=PROVIDER,
        )


@contextlib.contextmanager
def map_errors(secrets: Iterable[str | None] = ()) -> Iterator[None]:
    """Translate `google-genai` and transport errors into `FerrymanError`, with `secrets`
    (and anything shaped like a credential) redacted from the message.

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
        cause = None if isinstance(exc, genai_errors.APIError) else exc
        raise scrubbed(error, secrets) from cause


def _translate(exc: Exception) -> FerrymanError | None:
    if isinstance(exc, genai_errors.APIError):  # HTTP error statuses and in-stream error events
        return from_api_error(exc)
    if isinstance(exc, TimeoutError | httpx2.TimeoutException):
        return FerrymanError(ErrorCode.TIMEOUT, "request to Gemini timed out", upstream=PROVIDER)
    if isinstance(exc, genai_errors.UnknownApiResponseError | json.JSONDecodeError):
        return FerrymanError(
            ErrorCode.UNAVAILABLE,
            "Gemini sent a malformed response",
            retryable=True,
            upstream=PROVIDER,
        )
    if isinstance(exc, (httpx2.HTTPError, *_AIOHTTP_ERRORS)):  # connect errors, cut streams
        return FerrymanError(
            ErrorCode.UNAVAILABLE,
            f"cannot reach Gemini or the stream broke: {type(exc).__name__}",
            retryable=True,
            upstream=PROVIDER,
        )
    return None


def from_api_error(exc: genai_errors.APIError) -> FerrymanError:
    """Map a `google.genai.errors.APIError` (status, body, headers) to the shared taxonomy."""
    status = exc.code if isinstance(exc.code, int) else None
    if is_redirect(status):
        assert status is not None
        headers = getattr(exc.response, "headers", None) or {}
        return redirect_error(PROVIDER, status, headers)
    details = _error_details(exc)
    reasons = {str(d.get("reason", "")) for d in details}
    message = f"Gemini returned {status} {exc.status or ''}: {exc.message or ''}".strip()
    retry_after: float | None = None
    if status in (401, 403) or any(r.startswith("API_KEY_") for r in reasons):
        # Gemini answers an invalid key with 400 INVALID_ARGUMENT (reason API_KEY_INVALID).
        # Fixed text: these messages are the likeliest to quote the key.
        denied = status == 403 and not any(r.startswith("API_KEY_") for r in reasons)
        return FerrymanError(
            ErrorCode.PERMISSION_DENIED if denied else ErrorCode.AUTH,
            f"Gemini denied the request ({status})"
            if denied
            else f"Gemini rejected the credentials ({status})",
            upstream=PROVIDER,
            status=status,
        )
    if status == 400 and _CONTEXT_LENGTH.search(exc.message or ""):
        # Gemini has no error code for an over-long prompt: only this message says so
        # ("The input token count (N) exceeds the maximum number of tokens allowed (M)").
        code = ErrorCode.CONTEXT_LENGTH
    elif status == 499:  # the request was cancelled upstream
        code = ErrorCode.UNAVAILABLE
    else:  # 404 (an unknown model) is not_found; 400 and other 4xx are invalid requests
        code = code_for_status(status, conflict_is_transient=True)
    if code is ErrorCode.RATE_LIMITED:
        retry_after = _retry_after(exc, details)
    return FerrymanError(code, message, upstream=PROVIDER, status=status, retry_after=retry_after)


def _error_details(exc: genai_errors.APIError) -> list[dict[str, Any]]:
    body = exc.details
    error = body.get("error", body) if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    if not isinstance(details, list):
        return []
    return [d for d in details if isinstance(d, dict)]


def _retry_after(exc: genai_errors.APIError, details: list[dict[str, Any]]) -> float | None:
    """Seconds from a `Retry-After` header, else from the `RetryInfo` detail (`"12s"`)."""
    headers = getattr(exc.response, "headers", None)
    if headers is not None:
        with contextlib.suppress(AttributeError, TypeError):
            if (seconds := parse_retry_after(headers)) is not None:
                return seconds
    for detail in details:
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None
