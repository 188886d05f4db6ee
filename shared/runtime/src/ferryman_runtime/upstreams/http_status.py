"""Upstream HTTP answers in the shared taxonomy: status codes, redirects, `Retry-After`, and
credentials scrubbed from upstream text."""

from __future__ import annotations

import contextlib
import email.utils
import math
import time
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman_runtime.redaction import redact


def code_for_status(status: int | None, *, conflict_is_transient: bool = False) -> ErrorCode:
    """The taxonomy code of an upstream HTTP status no upstream-specific rule claimed.

    No status (an error without a response) counts as the upstream being unavailable.

    Args:
        status: the HTTP status, if there was a response.
        conflict_is_transient: map 409 to `unavailable` (retryable) instead of `conflict`;
            LLM APIs answer 409 to a concurrent request that succeeds when sent again.
    """
    if status == 401:
        return ErrorCode.AUTH
    if status == 403:
        return ErrorCode.PERMISSION_DENIED
    if status == 404:
        return ErrorCode.NOT_FOUND
    if status == 409:
        return ErrorCode.UNAVAILABLE if conflict_is_transient else ErrorCode.CONFLICT
    if status == 412:
        return ErrorCode.PRECONDITION_FAILED
    if status == 413:
        return ErrorCode.TOO_LARGE
    if status == 429:
        return ErrorCode.RATE_LIMITED
    if status == 408:
        return ErrorCode.TIMEOUT
    if status is None or status >= 500:
        return ErrorCode.UNAVAILABLE
    return ErrorCode.INVALID_REQUEST


def is_redirect(status: int | None) -> bool:
    """Whether `status` is a 3xx answer (which provider clients never follow)."""
    return status is not None and 300 <= status < 400


def redirect_error(upstream: str, status: int, headers: Mapping[str, str]) -> FerrymanError:
    """The error for a redirect: never followed (the prompt and the key would go wherever
    it points), and not retryable (the same endpoint answers the same way).

    The message names only the target's origin: a `Location` may carry a signed query.
    """
    location = {k.lower(): v for k, v in headers.items()}.get("location")
    target = "no location"
    if location:
        with contextlib.suppress(ValueError):
            url = urlsplit(location)
            port = "" if url.port is None else f":{url.port}"
            target = f"{url.scheme}://{url.hostname}{port}" if url.hostname else "a path of its own"
    return FerrymanError(
        ErrorCode.UNAVAILABLE,
        f"{upstream} answered {status} redirecting to {target}; redirects are never followed"
        " (check the endpoint configured for it)",
        retryable=False,
        upstream=upstream,
        status=status,
    )


def scrubbed(error: FerrymanError, secrets: Iterable[str | None]) -> FerrymanError:
    """`error` with `secrets`, and anything shaped like a credential, redacted from its message
    (upstream text: a provider or a proxy may echo the request's auth header)."""
    message = redact(error.message, secrets)
    if message == error.message:
        return error
    return FerrymanError(
        error.code,
        message,
        retryable=error.retryable,
        upstream=error.upstream,
        status=error.status,
        retry_after=error.retry_after,
    )


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Return seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if (raw_ms := lowered.get("retry-after-ms")) is not None:
        with contextlib.suppress(ValueError):
            if math.isfinite(value := float(raw_ms)):
                return max(value / 1000.0, 0.0)
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    with contextlib.suppress(ValueError):
        value = float(raw)
        return max(value, 0.0) if math.isfinite(value) else None
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(raw)
        return max(when.timestamp() - time.time(), 0.0)
    return None
