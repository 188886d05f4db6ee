"""Azure Blob failures in the shared taxonomy: the SDK's response, connection and timeout
errors become `FerrymanError` at the Azure adapter's edge, with `retryable` set and no
credential (account key, SAS signature) in the message."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Any

import aiohttp
from azure.core.exceptions import (
    AzureError,
    DecodeError,
    HttpResponseError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)

from ferryman.contracts.errors import ErrorCode, FerrymanError
from ferryman_runtime.upstreams.http_status import code_for_status, parse_retry_after, scrubbed

_BY_CODE: dict[str, ErrorCode] = {
    "BlobNotFound": ErrorCode.NOT_FOUND,
    "ContainerNotFound": ErrorCode.NOT_FOUND,
    "ResourceNotFound": ErrorCode.NOT_FOUND,
    "CannotVerifyCopySource": ErrorCode.NOT_FOUND,
    "BlobAlreadyExists": ErrorCode.CONFLICT,
    "LeaseIdMissing": ErrorCode.CONFLICT,
    "LeaseAlreadyPresent": ErrorCode.CONFLICT,
    "PendingCopyOperation": ErrorCode.CONFLICT,
    "BlobArchived": ErrorCode.CONFLICT,
    "BlobBeingRehydrated": ErrorCode.CONFLICT,
    "BlobImmutableDueToPolicy": ErrorCode.CONFLICT,
    "InvalidBlockList": ErrorCode.CONFLICT,
    "ConditionNotMet": ErrorCode.PRECONDITION_FAILED,
    "SourceConditionNotMet": ErrorCode.PRECONDITION_FAILED,
    # a copy's only target condition is `if_absent`'s If-None-Match: *
    "TargetConditionNotMet": ErrorCode.CONFLICT,
    "AuthenticationFailed": ErrorCode.AUTH,
    "InvalidAuthenticationInfo": ErrorCode.AUTH,
    "NoAuthenticationInformation": ErrorCode.AUTH,
    "AuthorizationFailure": ErrorCode.PERMISSION_DENIED,
    "AuthorizationPermissionMismatch": ErrorCode.PERMISSION_DENIED,
    "AuthorizationSourceIPMismatch": ErrorCode.PERMISSION_DENIED,
    "AuthorizationProtocolMismatch": ErrorCode.PERMISSION_DENIED,
    "AuthorizationResourceTypeMismatch": ErrorCode.PERMISSION_DENIED,
    "AuthorizationServiceMismatch": ErrorCode.PERMISSION_DENIED,
    "InsufficientAccountPermissions": ErrorCode.PERMISSION_DENIED,
    "AccountIsDisabled": ErrorCode.PERMISSION_DENIED,
    "RequestBodyTooLarge": ErrorCode.TOO_LARGE,
    "BlockCountExceedsLimit": ErrorCode.TOO_LARGE,
    "BlockListTooLong": ErrorCode.TOO_LARGE,
    "MetadataTooLarge": ErrorCode.TOO_LARGE,
    "ServerBusy": ErrorCode.RATE_LIMITED,
    "OperationTimedOut": ErrorCode.TIMEOUT,
    "InternalError": ErrorCode.UNAVAILABLE,
    "InvalidMetadata": ErrorCode.INVALID_REQUEST,
    "InvalidHeaderValue": ErrorCode.INVALID_REQUEST,
    "InvalidQueryParameterValue": ErrorCode.INVALID_REQUEST,
    "InvalidInput": ErrorCode.INVALID_REQUEST,
    "InvalidUri": ErrorCode.INVALID_REQUEST,
    "InvalidResourceName": ErrorCode.INVALID_REQUEST,
    "InvalidRange": ErrorCode.INVALID_REQUEST,
    "InvalidTag": ErrorCode.INVALID_REQUEST,
    "OutOfRangeInput": ErrorCode.INVALID_REQUEST,
    "MissingRequiredHeader": ErrorCode.INVALID_REQUEST,
    "UnsupportedHeader": ErrorCode.INVALID_REQUEST,
}
_RETRYABLE_OVERRIDES: dict[str, bool] = {
    # another put of the same key committed first (Azure then drops every other uncommitted
    # block of the blob): sending the put again stages and commits anew
    "InvalidBlockList": True,
    "PendingCopyOperation": True,
    "BlobBeingRehydrated": True,
}
_TRANSPORT = (aiohttp.ClientError, ConnectionError, TimeoutError, asyncio.TimeoutError)
_SHOWN_KEY_CHARS = 200
_SHOWN_MESSAGE_CHARS = 300


class AzureErrorMapper:
    """Turns Azure SDK failures into `FerrymanError` for one store.

    Args:
        upstream: the store's name (the `upstream` of every error).
        secrets: the store's credentials, redacted from every message.
    """

    def __init__(self, upstream: str, secrets: Iterable[str | None]) -> None:
        self._upstream = upstream
        self._secrets = tuple(secret for secret in secrets if secret)

    @property
    def upstream(self) -> str:
        """The store's name."""
        return self._upstream

    @contextmanager
    def mapped(self, operation: str, key: str | None = None) -> Iterator[None]:
        """Run the block, raising every Azure or transport failure inside it as
        `FerrymanError`.

        Raises:
            FerrymanError: for every SDK or connection error raised inside the block.
        """
        try:
            yield
        except FerrymanError:
            raise
        except (AzureError, *_TRANSPORT) as exc:
            raise self.translate(exc, operation, key) from None

    def translate(self, exc: BaseException, operation: str, key: str | None) -> FerrymanError:
        """The taxonomy error for `exc`, raised by `operation` on `key`."""
        where = f"Azure {operation}" + ("" if key is None else f" of {key[:_SHOWN_KEY_CHARS]!r}")
        return scrubbed(self._classify(exc, where), self._secrets)

    def _classify(self, exc: BaseException, where: str) -> FerrymanError:
        up = self._upstream
        if isinstance(exc, HttpResponseError) and exc.status_code is not None:
            return self._from_response(exc, where)
        if isinstance(exc, ServiceRequestTimeoutError | ServiceResponseTimeoutError):
            return FerrymanError(ErrorCode.TIMEOUT, f"{where}: the endpoint stalled", upstream=up)
        if isinstance(exc, (ServiceRequestError, ServiceResponseError, *_TRANSPORT)):
            return FerrymanError(
                ErrorCode.UNAVAILABLE,
                f"{where}: cannot reach the endpoint ({type(exc).__name__})",
                upstream=up,
            )
        if isinstance(exc, DecodeError):
            return FerrymanError(
                ErrorCode.UNAVAILABLE, f"{where}: the answer was cut or garbled", upstream=up
            )
        return FerrymanError(
            ErrorCode.UNAVAILABLE, f"{where} failed: {type(exc).__name__}", upstream=up
        )

    def _from_response(self, exc: HttpResponseError, where: str) -> FerrymanError:
        code = error_code(exc)
        status = exc.status_code
        taxonomy = _BY_CODE.get(code) or code_for_status(status)
        # the service's own sentence; never its XML body (it may echo what was signed)
        said = _first_line(exc.message or "") if code else (exc.reason or "")
        shown = f"{where}: {code or status}" + (f" ({said})" if said else "")
        headers: Any = getattr(exc.response, "headers", None) or {}
        return FerrymanError(
            taxonomy,
            shown,
            retryable=_RETRYABLE_OVERRIDES.get(code),
            upstream=self._upstream,
            status=status,
            retry_after=parse_retry_after(dict(headers.items())),
        )


def error_code(exc: HttpResponseError) -> str:
    """Azure's error code of `exc` (`BlobNotFound`, …), or "" when the answer had none."""
    code: Any = getattr(exc, "error_code", None)  # set by the storage SDK, not azure-core
    if isinstance(code, Enum):
        return str(code.value)
    return str(code or "")


def _first_line(message: str) -> str:
    line = message.strip().splitlines()[0] if message.strip() else ""
    line = line.removeprefix("Operation returned an invalid status ").strip("'\"")
    return line[:_SHOWN_MESSAGE_CHARS]
