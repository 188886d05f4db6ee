"""The one error taxonomy shared by every worker.

Adapters map SDK errors to `FerrymanError` at their edge. Retries, circuit
breakers, failover and dead-lettering read `retryable` and nothing else.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class ErrorCode(StrEnum):
    """Error codes carried in `failed` events."""

    INVALID_REQUEST = "invalid_request"
    AUTH = "auth"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    CONTENT_FILTER = "content_filter"
    CONTEXT_LENGTH = "context_length"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    INTERNAL = "internal"


_RETRYABLE_BY_DEFAULT = frozenset(
    {ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT, ErrorCode.INTERNAL}
)


class ErrorInfo(BaseModel):
    """An error as it travels in events."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: ErrorCode
    """One code of the shared taxonomy."""
    message: str
    """Human-readable description; never contains secrets."""
    retryable: bool
    """Whether sending the same request again may succeed."""
    provider: str | None = None
    """The upstream provider that produced the error, when there is one."""
    status: int | None = Field(default=None, ge=100, le=599)
    """The upstream HTTP status, when there is one."""


class FerrymanError(Exception):
    """An error in the shared taxonomy, raised by adapters and services.

    Args:
        code: the taxonomy code.
        message: a description safe to publish (no secrets).
        retryable: overrides the code's default retryability.
        provider: the upstream provider, if any.
        status: the upstream HTTP status, if any.
        retry_after: seconds the upstream asked us to wait, if it said.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retryable: bool | None = None,
        provider: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = code in _RETRYABLE_BY_DEFAULT if retryable is None else retryable
        self.provider = provider
        self.status = status
        self.retry_after = retry_after

    def to_info(self) -> ErrorInfo:
        """Return the event form of this error."""
        status = self.status if self.status is not None and 100 <= self.status <= 599 else None
        return ErrorInfo(
            code=self.code,
            message=self.message,
            retryable=self.retryable,
            provider=self.provider,
            status=status,
        )

    def __repr__(self) -> str:
        return f"FerrymanError({self.code.value!r}, {self.message!r}, retryable={self.retryable})"
