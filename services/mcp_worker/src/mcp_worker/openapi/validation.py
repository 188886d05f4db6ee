"""Checking an API's responses against its OpenAPI document, with openapi-core.

What is checked, for the operation the tool names:

- the status: declared exactly, by its range (`4XX`) or by `default`;
- the media type of a body, when the response declares content (an empty body where content
  is declared is a problem, except for HEAD);
- the body against the media type's schema (`$ref` cycles included; 3.0 documents with the
  3.0 read rules, so `readOnly` and `nullable` mean what they say);
- the response headers the document declares (required ones present, values of the schema).

`+json` media types are read as JSON, and so are bodies under a declared range (`*/*`) when
they parse. A body cut at the size limit is checked for status and media type only. A fault
of openapi-core itself (e.g. a media type it cannot parse) is reported as a problem.

The operation is found by the tool's path template and method, never by matching the URL: the
registry may override the base URL, and the spec's server may carry a path (`/v2`), so the
request's URL says nothing reliable about which operation it was.

Problems are short and free of secrets: a header is named, never its value; a body is
described by the path to the failing part and the schema keyword it breaks, never by the
values in it (only property names appear, as `required` and `additionalProperties` name them).
The one header value named is the response's media type (without its parameters).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import httpx2
from jsonschema.exceptions import ValidationError as SchemaError
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.deserializing.exceptions import DeserializeError
from openapi_core.deserializing.media_types.datatypes import DeserializerCallable
from openapi_core.deserializing.media_types.util import json_loads
from openapi_core.templating.media_types.exceptions import MediaTypeNotFound
from openapi_core.templating.paths.exceptions import PathError
from openapi_core.templating.paths.finders import BasePathFinder
from openapi_core.templating.paths.iterators import (
    SimpleOperationsIterator,
    SimplePathsIterator,
    SimpleServersIterator,
)
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_core.validation.response.exceptions import (
    HeaderValidationError,
    InvalidData,
    MissingData,
    MissingRequiredHeader,
)
from openapi_core.validation.response.protocols import ResponseValidator

from mcp_worker.openapi.operations import OperationTool
from mcp_worker.openapi.spec import ApiSpec

MAX_PROBLEMS = 5
"""Problems reported per response at most (the rest are counted in the last one)."""
PROBLEM_CHARS = 200
"""Characters of one problem at most."""

# Keywords whose jsonschema messages name properties (from the schema or the body's keys),
# never values: safe to pass on as they are.
_NAMING_KEYWORDS = frozenset(
    {"required", "additionalProperties", "unevaluatedProperties", "dependentRequired"}
)
_JSON_TYPES: dict[type, str] = {
    dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
    float: "number", type(None): "null",
}  # fmt: skip


class _ByPathTemplate(BasePathFinder):
    """Finds the operation by its path template as written in `paths` (no URL matching)."""

    paths_iterator = SimplePathsIterator("paths")
    operations_iterator = SimpleOperationsIterator()
    servers_iterator = SimpleServersIterator()


@dataclass
class _OperationRequest:
    """openapi-core's `Request` protocol for a request already matched to its operation.

    `host_url` is empty so openapi-core's `urljoin(host_url, path_pattern)` is the template
    itself, which `_ByPathTemplate` looks up as it is.
    """

    method: str
    path_pattern: str
    content_type: str = ""
    body: bytes | None = None
    host_url: str = ""
    parameters: RequestParameters = field(default_factory=RequestParameters)

    @property
    def path(self) -> str:
        return self.path_pattern


@dataclass(frozen=True)
class _ReceivedResponse:
    """openapi-core's `Response` protocol over an httpx2 response (body already read)."""

    status_code: int
    content_type: str
    headers: httpx2.Headers
    data: bytes | None


class ResponseValidation:
    """Checks responses against one spec; build it once per spec and share it (openapi-core's
    objects are built here, its schema validators on first use).

    `problems` may run in several threads at once: it only reads the shared openapi-core
    objects (jsonschema-path's resolved cache, the one mutable part, is off by default).

    Args:
        spec: the API's document, as the tools were generated from it.
    """

    def __init__(self, spec: ApiSpec) -> None:
        self.spec = spec
        config = Config(
            # load_spec validated the document already; openapi-core skips it on None
            spec_validator_cls=None,  # pyright: ignore[reportArgumentType]
            path_finder_cls=_ByPathTemplate,
            extra_media_type_deserializers=_deserializers(spec.document),
        )
        self._validator: ResponseValidator = OpenAPI.from_dict(
            spec.document, config=config
        ).response_validator

    def problems(
        self,
        tool: OperationTool,
        request: httpx2.Request,
        response: httpx2.Response,
        *,
        body_complete: bool = True,
    ) -> list[str]:
        """How `response` (its body read) to `request`, a call of `tool`, departs from the
        spec; empty when it matches.

        Args:
            tool: the operation called (found in the spec by its path template and method).
            request: the request sent.
            response: the answer, its body read.
            body_complete: False when the body was cut at a size limit: its status and media
                type are still checked, its content is not.
        """
        status = response.status_code
        operation = _OperationRequest(method=request.method.lower(), path_pattern=tool.path)
        received = _ReceivedResponse(
            status_code=status,
            content_type=response.headers.get("content-type", "").lower(),
            headers=response.headers,
            data=response.content,
        )
        found: list[str] = []
        try:
            for error in self._validator.iter_errors(operation, received):
                found.extend(_describe(error, tool, status, received, body_complete))
        except Exception as exc:  # a fault of the checker must not fail a call under `warn`
            fault = type(exc).__name__
            found.append(f"HTTP {status}: the response could not be checked ({fault})")
        if len(found) > MAX_PROBLEMS:
            extra = len(found) - MAX_PROBLEMS + 1
            found = [*found[: MAX_PROBLEMS - 1], f"and {extra} more problems"]
        return [problem[:PROBLEM_CHARS] for problem in found]


def _describe(
    error: Exception,
    tool: OperationTool,
    status: int,
    received: _ReceivedResponse,
    body_complete: bool,
) -> Iterator[str]:
    """`error` from openapi-core as problems (none when it does not apply)."""
    cause = error.__cause__
    media = received.content_type.split(";", 1)[0].strip()[:80]
    if isinstance(error, ResponseNotFound):
        declared = ", ".join(error.availableresponses)
        yield f"HTTP {status} is not declared (declared: {declared})"
    elif isinstance(error, PathError):
        yield f"{tool.method} {tool.path} is not an operation of the spec"
    elif isinstance(error, MissingRequiredHeader):
        yield f"HTTP {status}: required header {error.name!r} is missing"
    elif isinstance(error, HeaderValidationError):
        yield f"HTTP {status}: header {error.name!r} does not match its schema"
    elif isinstance(error, MissingData):
        if tool.method.upper() != "HEAD":
            yield f"HTTP {status}: the body is empty but the spec declares content"
    elif isinstance(cause, MediaTypeNotFound):
        declared = ", ".join(cause.availableMimetypes)
        named = repr(media) if media else "(none)"
        yield f"HTTP {status}: media type {named} is not declared (declared: {declared})"
    elif not body_complete:
        return  # a cut body cannot be read, let alone match its schema
    elif isinstance(cause, DeserializeError):
        yield f"HTTP {status}: the body is not valid {media}"
    elif isinstance(error, InvalidData):
        errors = _causes(cast(list[SchemaError], list(getattr(cause, "schema_errors", ()))))
        for schema_error in errors:
            yield f"HTTP {status}: body{_where(schema_error)}: {_broken(schema_error)}"
        if not errors:
            yield f"HTTP {status}: the body does not match its schema"
    else:
        yield f"HTTP {status}: {type(error).__name__}"


def _deserializers(document: dict[str, Any]) -> dict[str, DeserializerCallable]:
    """Readers for the media types openapi-core would take for bytes: `+json` types as JSON,
    and ranges (`*/*`, as springdoc declares every response) as JSON when the body is JSON."""
    readers: dict[str, DeserializerCallable] = {}
    for media in _declared_media_types(document):
        if media.endswith("+json"):
            readers[media] = json_loads
        elif "*" in media:
            readers[media] = _json_or_text
    return readers


def _json_or_text(value: bytes, **parameters: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        pass
    try:
        return value.decode(parameters.get("charset", "utf-8"))
    except (UnicodeDecodeError, LookupError):
        return value


def _declared_media_types(document: dict[str, Any]) -> set[str]:
    """Every media type (lower case, without parameters) named in a `content` map."""
    found: set[str] = set()
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in cast(dict[Any, Any], node).items():
                if key == "content" and isinstance(value, dict):
                    found.update(
                        str(media).split(";", 1)[0].strip().lower()
                        for media in cast(dict[Any, Any], value)
                    )
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(cast(list[Any], node))
    return found


def _causes(errors: list[SchemaError]) -> list[SchemaError]:
    """`errors` in path order, without the `unevaluatedProperties` errors another error in
    the same object explains (a subschema that fails evaluates none of its properties, so
    each of them is also reported "unexpected")."""
    paths = [tuple(e.absolute_path) for e in errors if e.validator != "unevaluatedProperties"]
    kept = [
        e
        for e in errors
        if e.validator != "unevaluatedProperties"
        or not any(p[: len(e.absolute_path)] == tuple(e.absolute_path) for p in paths)
    ]
    return sorted(kept, key=lambda e: [(isinstance(p, str), p) for p in e.absolute_path])


def _where(error: SchemaError) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)


def _broken(error: SchemaError) -> str:
    """What `error` says without the body's values: the keyword and the schema's constraint."""
    keyword = str(error.validator)
    if keyword in _NAMING_KEYWORDS:
        return error.message
    if keyword == "type":
        got = _JSON_TYPES.get(type(error.instance), type(error.instance).__name__)
        return f"expected type {error.validator_value!r}, got {got}"
    if keyword == "enum":
        return "not one of the allowed values"
    constraint = error.validator_value
    if isinstance(constraint, str | int | float | bool):
        return f"breaks {keyword!r} {constraint!r}"
    return f"breaks {keyword!r}"
