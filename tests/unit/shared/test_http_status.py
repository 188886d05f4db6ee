"""Upstream HTTP statuses in the shared taxonomy."""

from __future__ import annotations

import pytest

from ferryman.contracts import ErrorCode
from ferryman_runtime.upstreams.http_status import code_for_status, parse_retry_after


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, ErrorCode.INVALID_REQUEST),
        (401, ErrorCode.AUTH),
        (403, ErrorCode.PERMISSION_DENIED),
        (404, ErrorCode.NOT_FOUND),
        (408, ErrorCode.TIMEOUT),
        (409, ErrorCode.CONFLICT),
        (412, ErrorCode.PRECONDITION_FAILED),
        (413, ErrorCode.TOO_LARGE),
        (429, ErrorCode.RATE_LIMITED),
        (500, ErrorCode.UNAVAILABLE),
        (None, ErrorCode.UNAVAILABLE),
    ],
)
def test_statuses_map_to_the_taxonomy(status: int | None, code: ErrorCode) -> None:
    assert code_for_status(status) is code


def test_a_409_is_transient_for_upstreams_that_say_so() -> None:
    assert code_for_status(409, conflict_is_transient=True) is ErrorCode.UNAVAILABLE


def test_retry_after_in_milliseconds_wins_over_seconds() -> None:
    assert parse_retry_after({"Retry-After-Ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "nonsense"}) is None
