"""Calls one OpenAPI operation as a tool: validate the arguments, build the request, add the
credentials, send it within the call's time, retry what may be retried, read a bounded body.

Retries: only idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE) are sent again, after a
429, a 5xx or a transport failure, waiting the `Retry-After` the API asked for or an
exponential backoff with full jitter, never past the call's deadline. A 401 with an OAuth2
token fetches a new token once and sends again (any method: the API refused it unread).

Response validation (see `validation.py`): a response that became a result (2xx, 4xx, 304,
from the API or the cache) is checked against the spec; failures (5xx, 429, redirects,
transport errors, timeouts) are not, their error says enough. `off` checks nothing; `warn`
checks a sample (at most one response per tool every `WARN_SAMPLE_INTERVAL` seconds: drift
shows without a per-call cost of ~1 ms per KiB of JSON), reports the problems to
`on_invalid`, logs a line (at most one per tool a minute) and returns the result; `strict`
checks every response, reports the problems and fails the call, not retryable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import httpx2
from jsonschema import Draft202012Validator
from opentelemetry.propagate import inject

from ferryman.contracts import ErrorCode, FerrymanError
from mcp_worker.openapi.auth import ApiAuth
from mcp_worker.openapi.cache import CacheMode, cache_request, from_cache
from mcp_worker.openapi.http_request import UnsupportedParameter, build_request
from mcp_worker.openapi.http_response import ApiResult, api_result
from mcp_worker.openapi.operations import OperationTool
from mcp_worker.openapi.validation import ResponseValidation

logger = logging.getLogger(__name__)

BASE_DELAY = 0.2
MAX_DELAY = 5.0
WARN_INTERVAL = 60.0
_VARYING = ("header", "cookie")
"""Parameters whose values are part of a cached response's key (besides the URL)."""
WARN_SAMPLE_INTERVAL = 1.0
"""Under `warn`, seconds between two checked responses of one tool."""
"""Seconds between two warnings about one tool's invalid responses (`on_invalid` sees all)."""

VALIDATE_INLINE_BYTES = 16_384
"""Response bodies up to this size are validated on the event loop, larger ones in a thread."""

ResponseValidationMode = Literal["off", "warn", "strict"]


class ApiCaller:
    """Calls the operations of one API.

    Args:
        name: the API's name in the registry (in errors and results).
        tools: its operations by tool name.
        base_url: where its paths are (the spec's server, or the registry's override).
        auth: its credentials.
        client: the HTTP client (its transport may cache; see the caller's owner).
        max_bytes: response body bytes kept at most.
        retries: further sends of an idempotent call after a retryable failure.
        cache_client: the client read-only calls go through when `cache_mode` is not `off`
            (see `cache.caching_client`).
        cache_mode: how read-only calls' responses are cached, per tenant.
        cache_ttl: with `cache_mode` `ttl`, seconds a response is kept.
        response_validation: what a response that does not match the spec does: nothing
            (`off`), a warning (`warn`: the result is returned) or a failure (`strict`).
        validation: the spec's response validation, shared by the callers of one API (built
            by the owner; with `off` it is never used, so need not be built). Without it,
            responses are not checked.
        on_invalid: told the tool name and the problems of every response that does not
            match the spec (under `warn` and `strict`), e.g. to count them.
        sleep: waits between sends (injectable for tests).
        clock: monotonic seconds for the deadline (and the warnings' throttle).

    Raises:
        ValueError: `strict` validation without a `validation`.
    """

    def __init__(
        self,
        name: str,
        tools: Mapping[str, OperationTool],
        *,
        base_url: str,
        auth: ApiAuth,
        client: httpx2.AsyncClient,
        max_bytes: int,
        retries: int = 2,
        cache_client: httpx2.AsyncClient | None = None,
        cache_mode: CacheMode = "off",
        cache_ttl: float | None = None,
        response_validation: ResponseValidationMode = "warn",
        validation: ResponseValidation | None = None,
        on_invalid: Callable[[str, list[str]], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self._tools = tools
        self._base_url = base_url
        self._auth = auth
        self._client = client
        self._max_bytes = max_bytes
        self._retries = retries
        self._cache_client = cache_client if cache_mode != "off" else None
        self._cache_mode: CacheMode = cache_mode
        self._cache_ttl = cache_ttl
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._validators = {n: Draft202012Validator(t.input_schema) for n, t in tools.items()}
        if response_validation == "strict" and validation is None:
            raise ValueError(f"{name}: strict response validation needs the spec's validation")
        self._response_validation: ResponseValidationMode = response_validation
        self._validation = validation if response_validation != "off" else None
        self._on_invalid = on_invalid
        self._warned_at: dict[str, float] = {}
        self._sampled_at: dict[str, float] = {}

    async def call(
        self,
        tool_name: str,
        arguments: Mapping[str, Any],
        timeout: float,
        *,
        tenant: str | None = None,
        use_cache: bool = True,
    ) -> ApiResult:
        """Call `tool_name` with `arguments` within `timeout` seconds, for `tenant` (whose
        cached responses are its own; `use_cache` False: never answered from the cache).

        Raises:
            FerrymanError: unknown tool or bad arguments (`not_found`, `invalid_request`), a
                timeout, or a failure of the API after the retries (the code says which).
        """
        tool = self._tools.get(tool_name)
        if tool is None:
            raise FerrymanError(
                ErrorCode.NOT_FOUND, f"{self.name} has no tool {tool_name!r}", retryable=False
            )
        self._validate(tool_name, arguments)
        requirement = self._auth.requirement(tool.security)
        deadline = self._clock() + timeout
        sends, refreshed = 0, False
        while True:
            sends += 1
            try:
                response, cached = await self._send(
                    tool, arguments, requirement, deadline, tenant, use_cache
                )
                if response.status_code == 401 and not refreshed:
                    refreshed = True
                    if self._auth.forget_tokens(requirement):
                        sends -= 1  # a token refresh is not a retry
                        continue
                result = api_result(
                    response,
                    api=self.name,
                    max_bytes=self._max_bytes,
                    wrap_output=tool.output_wrapped,
                )
                await self._check_response(tool, response)
                return dataclasses.replace(result, cached=cached)
            except FerrymanError as exc:
                if not (exc.retryable and tool.idempotent and sends <= self._retries):
                    raise
                delay = exc.retry_after
                if delay is None:
                    delay = self._rng.uniform(0, min(MAX_DELAY, BASE_DELAY * 2 ** (sends - 1)))
                if self._clock() + delay >= deadline:
                    raise
                await self._sleep(delay)

    def _validate(self, tool_name: str, arguments: Mapping[str, Any]) -> None:
        errors = sorted(
            self._validators[tool_name].iter_errors(dict(arguments)), key=lambda e: list(e.path)
        )
        if errors:
            where = ".".join(str(p) for p in errors[0].absolute_path) or "(arguments)"
            problem = errors[0].message[:300]
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"invalid arguments for {self.name}/{tool_name}: {where}: {problem}",
                retryable=False,
            )

    async def _check_response(self, tool: OperationTool, response: httpx2.Response) -> None:
        """Report, log or fail on a response that does not match the spec.

        Raises:
            FerrymanError: under `strict`, `unavailable` (not retryable: the API answers
                outside its contract, and asking again gets the same answer).
        """
        if self._validation is None:
            return
        if self._response_validation == "warn":
            now = self._clock()
            last = self._sampled_at.get(tool.name)
            if last is not None and now - last < WARN_SAMPLE_INTERVAL:
                return
            self._sampled_at[tool.name] = now
        check = functools.partial(
            self._validation.problems,
            tool,
            response.request,
            response,
            body_complete=len(response.content) <= self._max_bytes,
        )
        # jsonschema takes up to ~2 ms per KiB of JSON (measured on the inventory's items):
        # a large body would stall every other call on the loop.
        big = len(response.content) > VALIDATE_INLINE_BYTES
        problems = await asyncio.to_thread(check) if big else check()
        if not problems:
            return
        if self._on_invalid is not None:
            self._on_invalid(tool.name, problems)
        if self._response_validation == "strict":
            raise FerrymanError(
                ErrorCode.UNAVAILABLE,
                f"{self.name}/{tool.name}: the response does not match the spec: {problems[0]}",
                retryable=False,
                upstream=self.name,
                status=response.status_code,
            )
        now = self._clock()
        last = self._warned_at.get(tool.name)
        if last is None or now - last >= WARN_INTERVAL:
            self._warned_at[tool.name] = now
            logger.warning(
                "%s/%s: the response does not match the spec: %s",
                self.name,
                tool.name,
                "; ".join(problems),
            )

    async def _send(
        self,
        tool: OperationTool,
        arguments: Mapping[str, Any],
        requirement: Mapping[str, tuple[str, ...]],
        deadline: float,
        tenant: str | None,
        use_cache: bool,
    ) -> tuple[httpx2.Response, bool]:
        try:
            request = build_request(tool, arguments, self._base_url)
        except UnsupportedParameter as exc:
            raise FerrymanError(ErrorCode.INVALID_REQUEST, str(exc), retryable=False) from None
        # What results may name: the request before credentials (a query API key) are added.
        public = httpx2.Request(request.method, request.url)
        client = self._client
        # Reads may be answered from the cache; writes pass through it too, so that (in `rfc`
        # mode) they invalidate what was cached for their URL. Keyed before credentials.
        if self._cache_client is not None and (use_cache or not tool.read_only):
            client = self._cache_client
            cache_request(
                request,
                tenant=tenant,
                mode=self._cache_mode,
                ttl=self._cache_ttl,
                varies=[b.name for b in tool.bindings.values() if b.location in _VARYING],
            )
        inject(request.headers)  # W3C trace context: the API can continue the trace
        remaining = deadline - self._clock()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                request = await self._auth.apply(request, requirement)
                response = await client.send(request, stream=True)
                try:
                    body = await _bounded_body(response, self._max_bytes + 1)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise FerrymanError(
                ErrorCode.TIMEOUT,
                f"{self.name}/{tool.name} did not answer within the call's time",
                retryable=True,
                upstream=self.name,
            ) from None
        except httpx2.TransportError as exc:
            raise FerrymanError(
                ErrorCode.UNAVAILABLE,
                f"{self.name} could not be reached ({type(exc).__name__})",
                retryable=True,
                upstream=self.name,
            ) from None
        # The body is decoded already, and may be cut: its encoding and length no longer apply.
        headers = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        bounded = httpx2.Response(
            response.status_code, headers=headers, content=body, request=public
        )
        return bounded, from_cache(response)


async def _bounded_body(response: httpx2.Response, limit: int) -> bytes:
    """At most `limit` bytes of the body (the rest is never read into memory)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk[: limit - size])
        size += len(chunks[-1])
        if size >= limit:
            break
    return b"".join(chunks)
