"""HTTP details shared by provider adapters: status codes and `Retry-After` parsing."""

from __future__ import annotations

import contextlib
import email.utils
import math
import time
from collections.abc import Mapping

from ferryman.contracts import ErrorCode

RETRYABLE_CODES = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.TIMEOUT, ErrorCode.UNAVAILABLE})
"""Codes an upstream HTTP failure is worth retrying for."""


def code_for_status(status: int | None) -> ErrorCode:
    """The taxonomy code of an upstream HTTP status no provider-specific rule claimed.

    No status (an error without a response) counts as the upstream being unavailable.
    """
    if status in (401, 403):
        return ErrorCode.AUTH
    if status == 429:
        return ErrorCode.RATE_LIMITED
    if status == 408:
        return ErrorCode.TIMEOUT
    if status is None or status == 409 or status >= 500:
        return ErrorCode.UNAVAILABLE
    return ErrorCode.INVALID_REQUEST


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
