"""Argument and output checks name the field and the rule, never the offending value (which
may be a secret)."""

from __future__ import annotations

import logging

import pytest

from ferryman.contracts import ErrorCode, FerrymanError
from mcp_worker.execution.limits import Limits, check_arguments, check_structured

LIMITS = Limits(
    max_argument_bytes=10_000,
    max_argument_depth=8,
    max_output_bytes=10_000,
    output_overflow="truncate",
)
SCHEMA = {
    "type": "object",
    "properties": {"user": {"type": "string"}, "password": {"type": "integer"}},
    "required": ["user", "password"],
    "additionalProperties": False,
}
SECRET = "hunter2-7e1d"


def refusal(arguments: dict[str, object]) -> FerrymanError:
    with pytest.raises(FerrymanError) as caught:
        check_arguments(arguments, SCHEMA, LIMITS, "login")
    assert caught.value.code == ErrorCode.INVALID_REQUEST
    return caught.value


@pytest.mark.parametrize(
    "value", [SECRET, {"nested": SECRET}, [SECRET]], ids=["string", "object", "list"]
)
def test_a_wrong_value_is_named_by_field_and_rule_not_quoted(value: object) -> None:
    error = refusal({"user": "ada", "password": value})

    assert SECRET not in error.message
    assert "password" in error.message
    assert "type" in error.message
    assert "integer" in error.message


def test_missing_and_unexpected_fields_keep_their_names() -> None:
    assert "'password' is a required property" in refusal({"user": "ada"}).message
    unexpected = refusal({"user": "ada", "password": 1, "otp": SECRET}).message
    assert "'otp' was unexpected" in unexpected
    assert SECRET not in unexpected


def test_a_broken_output_is_logged_without_its_values(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    schema = {"type": "object", "properties": {"count": {"type": "integer"}}}

    problem = check_structured({"count": SECRET}, schema, "warn", "tally")

    assert problem is not None
    assert "count" in problem
    assert SECRET not in problem
    assert SECRET not in caplog.text


def test_a_schema_with_an_unresolvable_ref_is_not_applied_instead_of_failing_the_call() -> None:
    from mcp_worker.execution.limits import Limits, check_arguments

    limits = Limits(
        max_argument_bytes=10_000,
        max_argument_depth=8,
        max_output_bytes=10_000,
        output_overflow="truncate",
    )
    hostile = {"type": "object", "properties": {"a": {"$ref": "https://example.invalid/x"}}}
    broken = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}

    check_arguments({"a": 1}, hostile, limits, "tool")
    check_arguments({"a": 1}, broken, limits, "tool")


def test_arguments_with_a_lone_surrogate_are_refused_clearly() -> None:
    import pytest

    from ferryman.contracts import FerrymanError
    from mcp_worker.execution.limits import Limits, check_arguments

    limits = Limits(
        max_argument_bytes=10_000,
        max_argument_depth=8,
        max_output_bytes=10_000,
        output_overflow="truncate",
    )
    with pytest.raises(FerrymanError, match="not valid Unicode"):
        check_arguments({"a": "\ud800"}, None, limits, "tool")
