"""Gemini errors in the shared taxonomy: `google-genai` and transport errors become
`FerrymanError`s, with credentials redacted from every upstream message."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

import httpx2
from google.genai import errors as genai_errors

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman_runtime.upstreams.http_status import (
    code_for_status,
    is_redirect,
    parse_retry_after,
    redirect_error,
    scrubbed,
)
from llm_worker.providers.gemini_request import PROVIDER

try:  # aiohttp is optional; the client built here never uses it, a caller's might.
    import aiohttp

    _AIOHTTP_ERRORS: tuple[type[Exception], ...] = (aiohttp.ClientError,)
except ImportError:  # pragma: no cover - depends on the environment
    _AIOHTTP_ERRORS = ()

GONE_STATUSES = (403, 404)
"""Statuses of a call naming a cached content that is gone (Gemini answers an unknown or
expired one with 403 "CachedContent not found (or permission denied)")."""

_CONTEXT_LENGTH = re.compile(r"input token count.*exceeds", re.IGNORECASE | re.DOTALL)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)s\s*$")


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


def is_cache_gone(exc: BaseException) -> bool:
    """Whether a generate call failed because its cached content is gone (expired, deleted,
    or unknown to this key): 403/404, or a 400 naming `CachedContent`."""
    status = error_status(exc)
    if status in GONE_STATUSES:
        return True
    return status == 400 and "cachedcontent" in error_message(exc).replace(" ", "").lower()


def error_status(exc: BaseException) -> int | None:
    """The HTTP status of an SDK error or a mapped `FerrymanError`, if it has one."""
    if isinstance(exc, genai_errors.APIError):
        return exc.code if isinstance(exc.code, int) else None
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def error_message(exc: BaseException) -> str:
    """The upstream message of an SDK error or a mapped `FerrymanError` (unredacted: never
    log it)."""
    if isinstance(exc, genai_errors.APIError):
        return exc.message or ""
    return str(getattr(exc, "message", "") or "")


def cache_outcome(exc: BaseException) -> str:
    """A low-cardinality label for a failed cache call (an error code)."""
    if isinstance(exc, genai_errors.APIError):
        return code_for_status(error_status(exc), conflict_is_transient=True).value
    if isinstance(exc, TimeoutError | httpx2.TimeoutException):
        return "timeout"
    return "unavailable"
