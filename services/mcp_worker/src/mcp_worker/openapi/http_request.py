"""The HTTP request of one tool call: arguments placed where the operation's bindings say,
serialized per the parameter's `style` and `explode`.

Path parameters are percent-encoded whole (`/`, `?`, `#` and dot segments included), so no
argument can change which path is called: `../admin` becomes `..%2Fadmin`, and `..`
becomes `%2E%2E` (an HTTP client would otherwise resolve it away).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import quote

import httpx2

from mcp_worker.openapi.operations import Binding, OperationTool

_DOT_SEGMENTS = {".": "%2E", "..": "%2E%2E"}


class UnsupportedParameter(ValueError):
    """A parameter uses a serialization this worker does not implement."""


def build_request(
    tool: OperationTool, arguments: Mapping[str, Any], base_url: str
) -> httpx2.Request:
    """The request `tool` makes with `arguments` (already validated against its schema).

    Raises:
        UnsupportedParameter: a parameter's style cannot be serialized here.
    """
    path = tool.path
    query: list[tuple[str, str]] = []
    headers: dict[str, str] = {}
    cookies: list[str] = []
    body: dict[str, Any] = {}
    for argument, value in arguments.items():
        binding = tool.bindings.get(argument)
        if binding is None or value is None:
            continue
        if binding.location == "path":
            path = path.replace("{" + binding.name + "}", _path_value(binding, value))
        elif binding.location == "query":
            query.extend(_query_pairs(binding, value))
        elif binding.location == "header":
            headers[binding.name] = _header_value(binding, _simple(binding, value))
        elif binding.location == "cookie":
            cookies.append(f"{binding.name}={quote(_simple(binding, value), safe='')}")
        else:
            body = _body(binding, value)
    if cookies:
        headers["Cookie"] = "; ".join(cookies)
    headers.update(body.pop("headers", {}))
    url = base_url.rstrip("/") + path
    params = httpx2.QueryParams(tuple(query))
    return httpx2.Request(tool.method.upper(), url, params=params, headers=headers, **body)


def _path_value(binding: Binding, value: Any) -> str:
    style = binding.style or "simple"
    if style != "simple":
        raise UnsupportedParameter(f"path parameter {binding.name!r}: style {style!r}")
    encoded = quote(_simple(binding, value), safe="")
    if not encoded:
        # `/items/{id}` with an empty id would call `/items/`, another resource.
        raise UnsupportedParameter(f"path parameter {binding.name!r} must not be empty")
    return _DOT_SEGMENTS.get(encoded, encoded)


def _header_value(binding: Binding, value: str) -> str:
    if not value.isascii() or not value.isprintable():
        # A CR/LF could add headers (or fail the connection and look like an outage).
        raise UnsupportedParameter(
            f"header parameter {binding.name!r} must be printable ASCII without line breaks"
        )
    return value


def _simple(binding: Binding, value: Any) -> str:
    """`style: simple`: arrays comma-joined; objects `k,v,…` (`k=v,…` exploded); a parameter
    described by `content` (JSON) as its JSON text."""
    if binding.content_type is not None:
        return _content(binding, value)
    if isinstance(value, list):
        return ",".join(_scalar(item) for item in cast(list[Any], value))
    if isinstance(value, dict):
        items = cast(dict[str, Any], value).items()
        if binding.explode:
            return ",".join(f"{k}={_scalar(v)}" for k, v in items)
        return ",".join(f"{k},{_scalar(v)}" for k, v in items)
    return _scalar(value)


def _query_pairs(binding: Binding, value: Any) -> list[tuple[str, str]]:
    if binding.content_type is not None:
        return [(binding.name, _content(binding, value))]
    style = binding.style or "form"
    explode = binding.explode if binding.explode is not None else style == "form"
    name = binding.name
    if isinstance(value, list):
        items = [_scalar(item) for item in cast(list[Any], value)]
        if style == "form":
            return [(name, item) for item in items] if explode else [(name, ",".join(items))]
        separators = {"spaceDelimited": " ", "pipeDelimited": "|"}
        if style in separators and not explode:
            return [(name, separators[style].join(items))]
        raise UnsupportedParameter(f"query parameter {name!r}: style {style!r} for an array")
    if isinstance(value, dict):
        fields = cast(dict[str, Any], value).items()
        if style == "deepObject":
            return [(f"{name}[{k}]", _scalar(v)) for k, v in fields]
        if style == "form":
            if explode:
                return [(k, _scalar(v)) for k, v in fields]
            return [(name, ",".join(f"{k},{_scalar(v)}" for k, v in fields))]
        raise UnsupportedParameter(f"query parameter {name!r}: style {style!r} for an object")
    return [(name, _scalar(value))]


def _content(binding: Binding, value: Any) -> str:
    essence = (binding.content_type or "").split(";", 1)[0].strip().lower()
    if essence == "application/json" or essence.endswith("+json"):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    raise UnsupportedParameter(f"parameter {binding.name!r}: content {essence!r} (JSON only)")


def _body(binding: Binding, value: Any) -> dict[str, Any]:
    content_type = binding.content_type or "application/json"
    if "*" in content_type:  # `*/*` accepts JSON; it is no Content-Type to send
        content_type = "application/json"
    if content_type == "application/x-www-form-urlencoded":
        fields = cast(dict[str, Any], value)
        return {"data": {k: _scalar(v) for k, v in fields.items()}}
    if content_type == "multipart/form-data":
        fields = cast(dict[str, Any], value)
        return {"files": {k: (None, _scalar(v)) for k, v in fields.items()}}
    if content_type != "application/json":  # `application/merge-patch+json` and the like
        content = json.dumps(value, ensure_ascii=False).encode()
        return {"content": content, "headers": {"Content-Type": content_type}}
    return {"json": value}


def _scalar(value: Any) -> str:
    """A scalar as the spec serializes it: booleans lower-case, objects as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
