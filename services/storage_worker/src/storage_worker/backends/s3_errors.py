"""S3 failures in the shared taxonomy: botocore's client, credential and connection errors
become `FerrymanError` at the S3 adapter's edge, with `retryable` set and no credential in
the message."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    FlexibleChecksumError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)

from ferryman.contracts.errors import ErrorCode, FerrymanError
from ferryman_runtime.upstreams.http_status import code_for_status, parse_retry_after, scrubbed

_BY_CODE: dict[str, ErrorCode] = {
    "NoSuchKey": ErrorCode.NOT_FOUND,
    "NoSuchVersion": ErrorCode.NOT_FOUND,
    "NoSuchBucket": ErrorCode.NOT_FOUND,
    "NotFound": ErrorCode.NOT_FOUND,
    "PreconditionFailed": ErrorCode.PRECONDITION_FAILED,
    "ConditionalRequestConflict": ErrorCode.CONFLICT,
    "InvalidObjectState": ErrorCode.CONFLICT,
    "AccessDenied": ErrorCode.PERMISSION_DENIED,
    "AllAccessDisabled": ErrorCode.PERMISSION_DENIED,
    "AccountProblem": ErrorCode.PERMISSION_DENIED,
    "InvalidAccessKeyId": ErrorCode.AUTH,
    "InvalidClientTokenId": ErrorCode.AUTH,
    "SignatureDoesNotMatch": ErrorCode.AUTH,
    "ExpiredToken": ErrorCode.AUTH,
    "InvalidToken": ErrorCode.AUTH,
    "TokenRefreshRequired": ErrorCode.AUTH,
    "InvalidSecurity": ErrorCode.AUTH,
    "EntityTooLarge": ErrorCode.TOO_LARGE,
    "MetadataTooLarge": ErrorCode.TOO_LARGE,
    "MaxMessageLengthExceeded": ErrorCode.TOO_LARGE,
    "SlowDown": ErrorCode.RATE_LIMITED,
    "Throttling": ErrorCode.RATE_LIMITED,
    "ThrottlingException": ErrorCode.RATE_LIMITED,
    "RequestLimitExceeded": ErrorCode.RATE_LIMITED,
    "TooManyRequestsException": ErrorCode.RATE_LIMITED,
    "RequestTimeout": ErrorCode.TIMEOUT,
    "RequestTimeTooSkewed": ErrorCode.AUTH,
    "ServiceUnavailable": ErrorCode.UNAVAILABLE,
    "InternalError": ErrorCode.UNAVAILABLE,
    "OperationAborted": ErrorCode.UNAVAILABLE,
    "NoSuchUpload": ErrorCode.UNAVAILABLE,
    "InvalidArgument": ErrorCode.INVALID_REQUEST,
    "InvalidRequest": ErrorCode.INVALID_REQUEST,
    "InvalidTag": ErrorCode.INVALID_REQUEST,
    "MalformedXML": ErrorCode.INVALID_REQUEST,
    "EntityTooSmall": ErrorCode.INVALID_REQUEST,
}
_RETRYABLE_OVERRIDES: dict[str, bool] = {
    "OperationAborted": True,  # a conflicting operation on the bucket is still in progress
    "NoSuchUpload": True,  # the multipart upload was aborted under us: a new put may pass
    "RequestTimeTooSkewed": False,
}
_TRANSPORT = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ConnectionClosedError,
    HTTPClientError,
    ResponseStreamingError,
    aiohttp.ClientError,
    ConnectionError,
    TimeoutError,
    asyncio.TimeoutError,
)
_SHOWN_KEY_CHARS = 200


class S3ErrorMapper:
    """Turns botocore failures into `FerrymanError` for one store.

    Args:
        upstream: the store's name (the `upstream` of every error).
        secrets: the store's credentials, redacted from every message.
    """

    def __init__(self, upstream: str, secrets: Iterable[str | None]) -> None:
        self._upstream = upstream
        self._secrets = tuple(secret for secret in secrets if secret)

    @contextmanager
    def mapped(self, operation: str, key: str | None = None) -> Iterator[None]:
        """Run the block, raising every S3 or transport failure inside it as `FerrymanError`.

        Raises:
            FerrymanError: for every botocore or connection error raised inside the block.
        """
        try:
            yield
        except FerrymanError:
            raise
        except (BotoCoreError, ClientError, *_TRANSPORT) as exc:
            raise self.translate(exc, operation, key) from exc

    def translate(self, exc: BaseException, operation: str, key: str | None) -> FerrymanError:
        """The taxonomy error for `exc`, raised by `operation` on `key`."""
        where = f"S3 {operation}" + ("" if key is None else f" of {key[:_SHOWN_KEY_CHARS]!r}")
        error = self._classify(exc, where)
        return scrubbed(error, self._secrets)

    def _classify(self, exc: BaseException, where: str) -> FerrymanError:
        up = self._upstream
        if isinstance(exc, ClientError):
            return self._from_response(exc.response, where)
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return FerrymanError(ErrorCode.AUTH, f"{where}: no usable credentials", upstream=up)
        if isinstance(exc, ParamValidationError):
            return FerrymanError(
                ErrorCode.INVALID_REQUEST, f"{where}: refused before sending: {exc}", upstream=up
            )
        if isinstance(exc, SSLError):
            return FerrymanError(
                ErrorCode.UNAVAILABLE,
                f"{where}: TLS with the endpoint failed (check its certificate)",
                retryable=False,
                upstream=up,
            )
        if isinstance(exc, ReadTimeoutError):
            return FerrymanError(ErrorCode.TIMEOUT, f"{where}: the endpoint stalled", upstream=up)
        if isinstance(exc, FlexibleChecksumError):
            return FerrymanError(
                ErrorCode.UNAVAILABLE,
                f"{where}: the bytes received do not match their checksum",
                upstream=up,
            )
        if isinstance(exc, _TRANSPORT):
            return FerrymanError(
                ErrorCode.UNAVAILABLE,
                f"{where}: cannot reach the endpoint ({type(exc).__name__})",
                upstream=up,
            )
        return FerrymanError(
            ErrorCode.UNAVAILABLE, f"{where} failed: {type(exc).__name__}", upstream=up
        )

    def _from_response(self, response: Any, where: str) -> FerrymanError:
        error: dict[str, Any] = response.get("Error") or {}
        meta: dict[str, Any] = response.get("ResponseMetadata") or {}
        code = str(error.get("Code") or "")
        status = meta.get("HTTPStatusCode")
        status = status if isinstance(status, int) else None
        taxonomy = _BY_CODE.get(code) or code_for_status(status)
        if status == 503 and code not in _BY_CODE:
            taxonomy = ErrorCode.UNAVAILABLE
        message = str(error.get("Message") or "")[:300]
        shown = f"{where}: {code or status}" + (f" ({message})" if message else "")
        headers = meta.get("HTTPHeaders") or {}
        return FerrymanError(
            taxonomy,
            shown,
            retryable=_RETRYABLE_OVERRIDES.get(code),
            upstream=self._upstream,
            status=status,
            retry_after=parse_retry_after(headers) if isinstance(headers, dict) else None,
        )
