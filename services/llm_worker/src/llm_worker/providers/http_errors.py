"""HTTP details shared by provider adapters: `Retry-After` parsing."""

from __future__ import annotations

import contextlib
import email.utils
import math
import time
from collections.abc import Mapping


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
