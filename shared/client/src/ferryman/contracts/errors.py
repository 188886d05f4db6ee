"""The one error taxonomy shared by every worker.

Adapters map SDK errors to `FerrymanError` at their edge. Retries, circuit
breakers, failover and dead-lettering read `retryable` and nothing else.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class ErrorCode(StrEnum):
    """Error codes carried in `failed` events.

    The set grows as workers do. A consumer that meets a code it does not know
    must not fail: it should treat the error by its `retryable` flag, which every
    error carries.
    """

    INVALID_REQUEST = "invalid_request"
    """The request is malformed or cannot be sent as it is."""
    AUTH = "auth"
    """The upstream rejected the credentials (missing, invalid, expired, unpaid)."""
    PERMISSION_DENIED = "permission_denied"
    """The credentials are valid but may not do this (model, resource or region)."""
    NOT_FOUND = "not_found"
    """What the request names does not exist upstream (a model, a deployment, an object)."""
    CONFLICT = "conflict"
    """The request conflicts with the upstream's current state (e.g. it already exists)."""
    PRECONDITION_FAILED = "precondition_failed"
    """A condition the request set no longer holds (e.g. an object changed since read)."""
    TOO_LARGE = "too_large"
    """The request (or an object in it) exceeds a size limit."""
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    CONTENT_FILTER = "content_filter"
    CONTEXT_LENGTH = "context_length"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    TOOL_ERROR = "tool_error"
    """A tool ran and reported an error itself (MCP `isError`), and the request asked to fail."""
    INTERNAL = "internal"
    """A fault in Ferryman itself (a bug); not retryable: the same input meets the same bug."""


RETRYABLE_CODES: frozenset[ErrorCode] = frozenset(
    {ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT}
)
"""The codes whose errors are retryable unless the raiser says otherwise: the only table.

Every other code is a verdict on the request, the credentials or the state upstream
that sending the same request again does not change (a `conflict` or a failed
precondition needs a new request, not a repeat).
"""


class ErrorInfo(BaseModel):
    """An error as it travels in events."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: ErrorCode | str = Field(union_mode="left_to_right")
    """One code of the shared taxonomy. A code this version does not know (a newer worker's)
    is kept as a plain string instead of failing validation: fall back on `retryable`."""
    message: str
    """Human-readable description; never contains secrets."""
    retryable: bool
    """Whether sending the same request again may succeed."""
    upstream: str | None = None
    """The upstream service that produced the error (e.g. `openai`), when there is one."""
    status: int | None = Field(default=None, ge=100, le=599)
    """The upstream HTTP status, when there is one."""


class FerrymanError(Exception):
    """An error in the shared taxonomy, raised by adapters and services.

    Args:
        code: the taxonomy code.
        message: a description safe to publish (no secrets).
        retryable: overrides the code's default retryability (`RETRYABLE_CODES`).
        upstream: the upstream service (provider, tool server, store), if any.
        status: the upstream HTTP status, if any.
        retry_after: seconds the upstream asked us to wait, if it said.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retryable: bool | None = None,
        upstream: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = code in RETRYABLE_CODES if retryable is None else retryable
        self.upstream = upstream
        self.status = status
        self.retry_after = retry_after

    def to_info(self) -> ErrorInfo:
        """Return the event form of this error."""
        status = self.status if self.status is not None and 100 <= self.status <= 599 else None
        return ErrorInfo(
            code=self.code,
            message=self.message,
            retryable=self.retryable,
            upstream=self.upstream,
            status=status,
        )

    def __repr__(self) -> str:
        return f"FerrymanError({self.code.value!r}, {self.message!r}, retryable={self.retryable})"
