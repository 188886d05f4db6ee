"""GCS failures in the shared taxonomy: aiohttp's response, connection and timeout errors
(what gcloud-aio-storage raises) become `FerrymanError` at the GCS adapter's edge, with
`retryable` set and no credential in the message."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import aiohttp

from ferryman.contracts.errors import ErrorCode, FerrymanError
from ferryman_runtime.redaction import REDACTED, redact
from ferryman_runtime.upstreams.http_status import code_for_status, parse_retry_after, scrubbed

_BY_REASON: dict[str, ErrorCode] = {
    "conditionNotMet": ErrorCode.PRECONDITION_FAILED,
    "notFound": ErrorCode.NOT_FOUND,
    "forbidden": ErrorCode.PERMISSION_DENIED,
    "accessNotConfigured": ErrorCode.PERMISSION_DENIED,
    "userProjectMissing": ErrorCode.INVALID_REQUEST,
    "authError": ErrorCode.AUTH,
    "required": ErrorCode.AUTH,
    "uploadTooLarge": ErrorCode.TOO_LARGE,
    "rateLimitExceeded": ErrorCode.RATE_LIMITED,
    "userRateLimitExceeded": ErrorCode.RATE_LIMITED,
    "backendError": ErrorCode.UNAVAILABLE,
}
_TOKEN_HOSTS = ("oauth2.googleapis.com", "metadata.google.internal", "169.254.169.254")
_SHOWN_KEY_CHARS = 200
_SHOWN_MESSAGE_CHARS = 300
_PEM_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.DOTALL
)


class GcsErrorMapper:
    """Turns aiohttp and GCS failures into `FerrymanError` for one store.

    Args:
        upstream: the store's name (the `upstream` of every error).
        secrets: the service account's private key and its id, redacted from every message.
    """

    def __init__(self, upstream: str, secrets: Iterable[str | None]) -> None:
        self._upstream = upstream
        self._secrets = tuple(secret for secret in secrets if secret)

    @contextmanager
    def mapped(self, operation: str, key: str | None = None) -> Iterator[None]:
        """Run the block, raising every GCS or transport failure inside it as `FerrymanError`.

        Raises:
            FerrymanError: for every aiohttp, connection or timeout error inside the block.
        """
        try:
            yield
        except FerrymanError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise self.translate(exc, operation, key) from exc

    def translate(self, exc: BaseException, operation: str, key: str | None) -> FerrymanError:
        """The taxonomy error for `exc`, raised by `operation` on `key`."""
        where = f"GCS {operation}" + ("" if key is None else f" of {key[:_SHOWN_KEY_CHARS]!r}")
        return scrubbed(self._classify(exc, where), self._secrets)

    def _classify(self, exc: BaseException, where: str) -> FerrymanError:
        up = self._upstream
        if isinstance(exc, aiohttp.ClientResponseError):
            if _is_token_request(exc):
                return FerrymanError(
                    ErrorCode.AUTH,
                    f"{where}: no access token for the credentials ({exc.status})",
                    retryable=exc.status >= 500 or exc.status == 429,
                    upstream=up,
                    status=exc.status,
                )
            return self.from_status(exc.status, exc.message, exc.headers, where)
        if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
            return FerrymanError(ErrorCode.TIMEOUT, f"{where}: the endpoint stalled", upstream=up)
        if isinstance(exc, aiohttp.ClientSSLError):
            return FerrymanError(
                ErrorCode.UNAVAILABLE,
                f"{where}: TLS with the endpoint failed (check its certificate)",
                retryable=False,
                upstream=up,
            )
        if isinstance(exc, aiohttp.ClientError | OSError):
            return FerrymanError(
                ErrorCode.UNAVAILABLE,
                f"{where}: cannot reach the endpoint ({type(exc).__name__})",
                upstream=up,
            )
        # ValueError: an answer that is not the JSON GCS sends (a proxy's page, say)
        return FerrymanError(
            ErrorCode.UNAVAILABLE, f"{where}: unexpected answer ({type(exc).__name__})", upstream=up
        )

    def from_status(
        self, status: int, text: str, headers: Mapping[str, str] | None, where: str
    ) -> FerrymanError:
        """The taxonomy error for a GCS answer of `status` with body (or message) `text`."""
        reason, message = _gcs_error(text)
        taxonomy = _BY_REASON.get(reason) or code_for_status(status)
        if status == 412:
            taxonomy = ErrorCode.PRECONDITION_FAILED
        shown = f"{where}: {status}" + (f" {reason}" if reason else "")
        if message:  # redacted whole first: a cut would leave part of a secret unmatched
            shown += f" ({self._redacted(message)[:_SHOWN_MESSAGE_CHARS]})"
        return scrubbed(
            FerrymanError(
                taxonomy,
                shown,
                upstream=self._upstream,
                status=status,
                retry_after=parse_retry_after(dict(headers)) if headers else None,
            ),
            self._secrets,
        )

    def _redacted(self, text: str) -> str:
        return redact(_PEM_KEY.sub(REDACTED, text), self._secrets)


def _is_token_request(exc: aiohttp.ClientResponseError) -> bool:
    try:
        host = exc.request_info.real_url.host
    except AttributeError:
        return False
    return host in _TOKEN_HOSTS


def _gcs_error(text: str) -> tuple[str, str]:
    """The reason and message of a GCS error document (`{"error": {...}}`) inside `text`
    (gcloud-aio puts the body after the HTTP reason)."""
    start = text.find("{")
    if start < 0:
        return "", text.strip()
    try:
        document: Any = json.loads(text[start:])
    except ValueError:
        return "", text.strip()
    error: Any = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return "", text.strip()
    errors: Any = error.get("errors")
    reason = ""
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        reason = str(errors[0].get("reason") or "")
    return reason, str(error.get("message") or "")
