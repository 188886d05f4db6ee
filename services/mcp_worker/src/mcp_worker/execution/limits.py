"""Checks around a call: arguments against the tool's `inputSchema` and the size and depth
limits before it; `structuredContent` against `outputSchema` and the output limit after it."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from jsonschema import exceptions as schema_errors
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing import Registry

from ferryman.contracts import ErrorCode, FerrymanError
from mcp_worker.catalog.definitions import canonical_json

logger = logging.getLogger(__name__)

_NAMES_ONLY = frozenset(
    {"required", "additionalProperties", "unevaluatedProperties", "dependentRequired"}
)
"""Schema rules whose error messages quote only property names, never values."""


@dataclass(frozen=True)
class Limits:
    """Size and depth bounds on arguments and outputs."""

    max_argument_bytes: int
    max_argument_depth: int
    max_output_bytes: int
    output_overflow: Literal["truncate", "fail"]


def depth(value: Any) -> int:
    """Nesting depth of a JSON value (a scalar is 0), without recursion limits."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)  # pyright: ignore[reportUnknownArgumentType]
    return deepest


def check_arguments(
    arguments: dict[str, Any], schema: dict[str, Any] | None, limits: Limits, tool: str
) -> None:
    """Refuse arguments that are too large, too deep, or do not match the input schema.

    Raises:
        FerrymanError: `too_large` or `invalid_request` naming the offending field.
    """
    try:
        size = len(canonical_json(arguments).encode())
    except UnicodeEncodeError:  # a lone surrogate that JSON decoding let through
        raise FerrymanError(
            ErrorCode.INVALID_REQUEST, f"arguments of {tool!r} hold text that is not valid Unicode"
        ) from None
    if size > limits.max_argument_bytes:
        raise FerrymanError(
            ErrorCode.TOO_LARGE,
            f"arguments of {tool!r} are {size} bytes; the limit is {limits.max_argument_bytes}",
        )
    levels = depth(arguments)
    if levels > limits.max_argument_depth:
        raise FerrymanError(
            ErrorCode.INVALID_REQUEST,
            f"arguments of {tool!r} nest {levels} levels; the limit is {limits.max_argument_depth}",
        )
    if not schema:
        return
    error = _first_error(canonical_json(schema), arguments)
    if error is not None:
        raise FerrymanError(ErrorCode.INVALID_REQUEST, f"arguments of {tool!r}: {error}")


def check_structured(
    structured: dict[str, Any] | None,
    schema: dict[str, Any] | None,
    policy: Literal["off", "warn", "strict"],
    tool: str,
) -> str | None:
    """Check `structuredContent` against `outputSchema`; return the problem (None: fine).

    Raises:
        FerrymanError: `policy` is `strict` and the content does not match.
    """
    if policy == "off" or not schema:
        return None
    if structured is None:
        problem = "the tool declares an output schema but returned no structured content"
    else:
        problem = _first_error(canonical_json(schema), structured)
    if problem is None:
        return None
    if policy == "strict":
        raise FerrymanError(
            ErrorCode.UNAVAILABLE,
            f"tool {tool!r} returned output that does not match its outputSchema: {problem}",
            retryable=False,
        )
    logger.warning("tool %s: output does not match its outputSchema: %s", tool, problem)
    return problem


def bound_output(
    content: list[dict[str, Any]],
    structured: dict[str, Any] | None,
    limits: Limits,
    tool: str,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, bool]:
    """Keep the output within the limit: cut text blocks (and drop structured content) and
    flag it, or fail, per the configured overflow policy.

    Raises:
        FerrymanError: `too_large` when the policy is `fail` and the output is over.
    """
    size = len(json.dumps(content).encode()) + len(json.dumps(structured).encode())
    if size <= limits.max_output_bytes:
        return content, structured, False
    if limits.output_overflow == "fail":
        raise FerrymanError(
            ErrorCode.TOO_LARGE,
            f"output of {tool!r} is {size} bytes; the limit is {limits.max_output_bytes}",
        )
    budget = limits.max_output_bytes
    kept: list[dict[str, Any]] = []
    for block in content:
        encoded = len(json.dumps(block).encode())
        if encoded <= budget:
            kept.append(block)
            budget -= encoded
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str) and budget > 256:
            text: str = block["text"]
            cut = text.encode()[: budget - 256].decode("utf-8", "ignore")
            kept.append({**block, "text": cut})
        break
    return kept, None, True


def _first_error(schema_text: str, instance: Any) -> str | None:
    validator = _validator(schema_text)
    if validator is None:
        return None
    try:
        error = schema_errors.best_match(validator.iter_errors(instance))  # pyright: ignore[reportUnknownMemberType]
    except Exception as exc:  # a hostile schema (an unresolvable `$ref`, …) is the server's fault
        logger.warning("a tool's schema cannot be applied (%s); not checked", type(exc).__name__)
        return None
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    if error.validator in _NAMES_ONLY:
        return f"{where}: {error.message[:300]}"
    # Other messages quote the offending value, which may be a secret (a password field):
    # name the rule it breaks instead.
    rule = json.dumps(error.validator_value, default=str)[:200]
    return f"{where}: does not satisfy {error.validator} {rule}"


@lru_cache(maxsize=1024)
def _validator(schema_text: str) -> Validator | None:
    """A compiled validator per schema (compiling costs far more than validating)."""
    schema = json.loads(schema_text)
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except schema_errors.SchemaError:
        logger.warning("a tool's schema is itself invalid; its values are not checked")
        return None
    # No remote or registry lookups: a `$ref` resolves inside the schema or not at all.
    return cls(schema, registry=Registry())
