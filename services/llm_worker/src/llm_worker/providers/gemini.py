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

Prompt caching: a request with cache breakpoints has its prefix (see `gemini_prefix`) put in
a cached content kept by the client's `GeminiContextCache` (see `gemini_cache`); the call
sends the rest and names the cached content, on `v1beta`. When Gemini answers that the
cached content is gone before anything was produced, it is recreated and the call made once
more, unseen by the attempt budget.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any, cast

import httpx2
from google import genai
from google.genai import types

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from llm_worker.chat.streaming import Completion, StreamEvent, fold_events
from llm_worker.metrics import GeminiCacheStats
from llm_worker.providers.call_context import current_call
from llm_worker.providers.gemini_cache import (
    GeminiCacheSettings,
    GeminiContextCache,
    Lease,
    cache_http_options,
)
from llm_worker.providers.gemini_errors import from_api_error, is_cache_gone, map_errors
from llm_worker.providers.gemini_prefix import SplitRequest, split_prefix
from llm_worker.providers.gemini_request import (
    PROVIDER,
    GeminiRequest,
    parse_safety_settings,
    translate_request,
)
from llm_worker.providers.gemini_response import ResponseMapper

MAX_HOPS = 32
"""Most requests one answer may take when Gemini pauses it with continuation tokens."""

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
        cache: how cached contents are kept (default: `GeminiCacheSettings()`).
        clock: the cache's clock, seconds (default: the event loop's).

    Raises:
        ValueError: an unknown category or threshold in `safety_settings`.
    """

    provider = PROVIDER

    def __init__(
        self,
        client: genai.Client,
        *,
        safety_settings: Mapping[str, str] | None = None,
        cache: GeminiCacheSettings | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._client = client
        api = client._api_client  # pyright: ignore[reportPrivateUsage]
        self._secrets = (api.api_key,)
        self._safety = parse_safety_settings(safety_settings or {}, source="safety_settings")
        self._cache = GeminiContextCache(
            client.aio.caches,
            settings=cache or GeminiCacheSettings(),
            http_options=cache_http_options(api._http_options.api_version),  # pyright: ignore[reportPrivateUsage]
            clock=clock,
        )

    @property
    def context_cache(self) -> GeminiContextCache:
        """The client's cached contents."""
        return self._cache

    def cache_stats(self) -> GeminiCacheStats:
        """Cached contents alive and cache operation counts (read by the metrics collector)."""
        return self._cache.stats()

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        """Stream the answer (text, one fragment per tool call, usage, finish).

        Raises:
            FerrymanError: the request cannot be expressed, or the call or the stream failed.
        """
        check_model_name(model)
        translated = translate_request(request, safety_settings=self._safety)
        split, lease = await self._lease(request, translated, model)
        produced = False
        try:
            async for event in self._stream_once(model, translated, split, lease):
                produced = True
                yield event
        except FerrymanError as exc:
            if split is None or lease is None or produced or not is_cache_gone(exc):
                raise
            lease = await self._relet(split, lease)
            async for event in self._stream_once(model, translated, split, lease):
                yield event

    async def _stream_once(
        self,
        model: str,
        translated: GeminiRequest,
        split: SplitRequest | None,
        lease: Lease | None,
    ) -> AsyncIterator[StreamEvent]:
        contents, config = self._call_args(translated, split, lease)
        mapper = ResponseMapper(cache_write_tokens=lease.written if lease else None)
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
        translated = translate_request(request, safety_settings=self._safety)
        split, lease = await self._lease(request, translated, model)
        try:
            return await self._generate_once(model, translated, split, lease)
        except FerrymanError as exc:
            if split is None or lease is None or not is_cache_gone(exc):
                raise
            lease = await self._relet(split, lease)
        return await self._generate_once(model, translated, split, lease)

    async def _generate_once(
        self,
        model: str,
        translated: GeminiRequest,
        split: SplitRequest | None,
        lease: Lease | None,
    ) -> Completion:
        contents, config = self._call_args(translated, split, lease)
        mapper = ResponseMapper(cache_write_tokens=lease.written if lease else None)
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

    async def _lease(
        self, request: ChatRequest, translated: GeminiRequest, model: str
    ) -> tuple[SplitRequest | None, Lease | None]:
        """The request's cacheable split and a cached content for it (None: uncached)."""
        context = current_call()
        split = split_prefix(
            request, translated, model=model, tenant=context.tenant if context else None
        )
        if split is None:
            return None, None
        return split, await self._cache.acquire(split.prefix, context)

    async def _relet(self, split: SplitRequest, gone: Lease) -> Lease | None:
        """A new cached content after Gemini said `gone` no longer exists (None: uncached)."""
        self._cache.drop(gone)
        return await self._cache.recreate(split.prefix, current_call())

    def _call_args(
        self, translated: GeminiRequest, split: SplitRequest | None, lease: Lease | None
    ) -> tuple[list[types.Content], types.GenerateContentConfig]:
        if split is None or lease is None:
            return translated.contents, translated.config
        return split.rest, split.cached_config(lease.name, self._cache.http_options)

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
        """Delete the cached contents, then close the SDK's connection pools (not a
        caller-owned `http_client`)."""
        await self._cache.aclose()
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


__all__ = [
    "MAX_HOPS",
    "GeminiChatModel",
    "check_model_name",
    "create_client",
    "from_api_error",
    "map_errors",
]
