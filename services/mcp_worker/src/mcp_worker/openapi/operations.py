"""Turning the operations of an :class:`ApiSpec` into tool definitions.

Each operation becomes an :class:`OperationTool` whose ``input_schema`` is one
JSON Schema object (2020-12): a property per path/query/header/cookie parameter
plus ``body`` for the request body. Where each argument goes on the wire is kept
apart in ``bindings`` so the schema stays a plain argument schema.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from mcp_worker.openapi.naming import (
    BODY_ARGUMENT,
    TOOL_NAME,
    argument_names,
    fallback_name,
    sanitize_name,
)
from mcp_worker.openapi.output_schema import is_json_media, success_schema
from mcp_worker.openapi.schemas import SchemaConverter, resolve_object
from mcp_worker.openapi.spec import ApiSpec

Location = Literal["path", "query", "header", "cookie", "body"]

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
READ_ONLY_METHODS = frozenset({"get", "head", "options"})
IDEMPOTENT_METHODS = frozenset({"get", "head", "options", "put", "delete"})
_DEFAULT_STYLE = {"path": "simple", "header": "simple", "query": "form", "cookie": "form"}
_LOCATION_ORDER = {"path": 0, "query": 1, "header": 2, "cookie": 3}
# OpenAPI says these header parameters SHALL be ignored (the request body/security set them).
_IGNORED_HEADERS = frozenset({"accept", "content-type", "authorization"})
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


@dataclass(frozen=True)
class Binding:
    """Where one tool argument goes in the HTTP request."""

    location: Location
    name: str
    style: str | None = None
    explode: bool | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class OperationTool:
    """One operation as a tool definition (pure data, no I/O)."""

    name: str
    description: str
    method: str
    path: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    bindings: Mapping[str, Binding]
    read_only: bool
    idempotent: bool
    tags: tuple[str, ...] = ()
    operation_id: str | None = None
    deprecated: bool = False
    output_wrapped: bool = False
    """True when a non-object success body is wrapped as ``{"result": ...}`` (MCP wants objects)."""
    security: tuple[Mapping[str, tuple[str, ...]], ...] = ()
    """The operation's security requirements (or the document's): any one of them satisfies
    it, each maps scheme names to scopes; empty: no authentication."""


@dataclass(frozen=True)
class OperationFilter:
    """Operation selectors; empty fields select nothing by themselves."""

    tags: frozenset[str] = frozenset()
    paths: tuple[str, ...] = ()
    """``fnmatch`` globs over the path template, e.g. ``/pets/*``."""
    methods: frozenset[str] = frozenset()
    """Lower-case HTTP methods."""

    def is_empty(self) -> bool:
        """True when no selector is set."""
        return not (self.tags or self.paths or self.methods)


@dataclass(frozen=True)
class ApiTools:
    """The tools generated from one spec and what could not be expressed."""

    tools: tuple[OperationTool, ...]
    warnings: tuple[str, ...] = field(default=())

    def by_name(self) -> dict[str, OperationTool]:
        """The tools keyed by tool name."""
        return {tool.name: tool for tool in self.tools}


def api_tools(
    spec: ApiSpec,
    *,
    include: OperationFilter | None = None,
    exclude: OperationFilter | None = None,
    name_overrides: Mapping[str, str] | None = None,
) -> ApiTools:
    """Generate one tool per selected operation, in path then method order.

    Selection: an operation is included when it matches every non-empty field of
    ``include`` (a field matches when any of its values does), then dropped when
    it matches any non-empty field of ``exclude``.

    Args:
        spec: A loaded spec.
        include: Keep only matching operations (``None``: all).
        exclude: Drop matching operations.
        name_overrides: Tool names keyed by operationId or ``"METHOD /path"``.

    Raises:
        ValueError: if an override is not a valid tool name.
    """
    overrides = dict(name_overrides or {})
    for key, value in overrides.items():
        if not TOOL_NAME.match(value):
            raise ValueError(
                f"name override {key!r} -> {value!r} is not a valid tool name "
                "([A-Za-z0-9_.-]{1,128})"
            )
    warnings: list[str] = []
    used_overrides: set[str] = set()
    taken: set[str] = set()
    tools: list[OperationTool] = []
    document = spec.document
    for path, item, method, operation in _operations(document):
        label = f"{method.upper()} {path}"
        if not _selected(path, method, operation, include, exclude):
            continue
        op_id = operation.get("operationId")
        op_id = op_id if isinstance(op_id, str) and op_id else None
        override_key = label if label in overrides else op_id if op_id in overrides else None
        if override_key is not None:
            used_overrides.add(override_key)
            name = overrides[override_key]
        else:
            name = sanitize_name(op_id) if op_id else fallback_name(method, path)
        unique = name
        counter = 2
        while unique in taken:
            unique = f"{name[:120]}_{counter}"
            counter += 1
        if unique != name:
            warnings.append(f"{label}: tool name {name!r} already used; named {unique!r}")
        try:
            tool = _build_tool(spec, path, item, method, operation, unique, op_id, warnings)
        except ValueError as exc:
            warnings.append(f"{label}: skipped: {exc}")
            continue
        if tool is not None:
            taken.add(unique)
            tools.append(tool)
    for key in sorted(set(overrides) - used_overrides):
        warnings.append(f"name override {key!r} matches no selected operation")
    return ApiTools(tools=tuple(tools), warnings=tuple(warnings))


def _operations(
    document: dict[str, Any],
) -> Iterable[tuple[str, dict[str, Any], str, dict[str, Any]]]:
    paths: dict[str, Any] = document.get("paths") or {}
    for path in sorted(paths):
        item = resolve_object(document, paths[path])
        if not isinstance(item, dict):
            continue
        for method in METHODS:
            operation = item.get(method)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
            if isinstance(operation, dict):
                yield path, item, method, operation  # pyright: ignore[reportReturnType]


def _matches(path: str, method: str, tags: set[str], selector: OperationFilter) -> list[bool]:
    checks: list[bool] = []
    if selector.tags:
        checks.append(bool(tags & selector.tags))
    if selector.paths:
        checks.append(any(fnmatch.fnmatchcase(path, glob) for glob in selector.paths))
    if selector.methods:
        checks.append(method in {m.lower() for m in selector.methods})
    return checks


def _selected(
    path: str,
    method: str,
    operation: dict[str, Any],
    include: OperationFilter | None,
    exclude: OperationFilter | None,
) -> bool:
    tags = {str(tag) for tag in operation.get("tags") or []}
    if (
        include is not None
        and not include.is_empty()
        and not all(_matches(path, method, tags, include))
    ):
        return False
    return not (exclude is not None and any(_matches(path, method, tags, exclude)))


def _build_tool(
    spec: ApiSpec,
    path: str,
    item: dict[str, Any],
    method: str,
    operation: dict[str, Any],
    name: str,
    op_id: str | None,
    warnings: list[str],
) -> OperationTool | None:
    document = spec.document
    label = f"{method.upper()} {path}"
    properties: dict[str, Any] = {}
    required: list[str] = []
    bindings: dict[str, Binding] = {}
    ignored: list[str] = []
    parameters = _parameters(document, item, operation, ignored)
    body = resolve_object(document, operation.get("requestBody"))
    sources = [_parameter_schema(parameter)[0] for parameter in parameters]
    if isinstance(body, dict):
        sources.append(_pick_body_media(body.get("content") or {})[1].get("schema", {}))  # pyright: ignore[reportUnknownArgumentType, reportUnknownMemberType]
    converter = SchemaConverter(
        document, openapi_30=spec.openapi.startswith("3.0"), mode="input", sources=sources
    )
    for header in ignored:
        warnings.append(f"{label}: header parameter {header!r} ignored (set by the HTTP client)")
    names = argument_names([(p["in"], p["name"]) for p in parameters])
    for parameter in parameters:
        location, spec_name = parameter["in"], parameter["name"]
        argument = names[(location, spec_name)]
        schema, content_type = _parameter_schema(parameter)
        raw = converter.convert(schema)
        converted: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {"allOf": [raw]}  # pyright: ignore[reportUnknownArgumentType]
        description = parameter.get("description")
        note = f"{location} parameter {spec_name!r}" if argument != spec_name else None
        text = " ".join(str(x) for x in (description, f"({note})" if note else None) if x)
        if text and "description" not in converted:
            converted["description"] = text
        properties[argument] = converted
        if parameter.get("required") is True or location == "path":
            required.append(argument)
        style = None if content_type else str(parameter.get("style") or _DEFAULT_STYLE[location])
        explode = None if content_type else bool(parameter.get("explode", style == "form"))
        bindings[argument] = Binding(location, spec_name, style, explode, content_type)
    if isinstance(body, dict):
        _add_body(body, converter, label, properties, required, bindings, warnings)  # pyright: ignore[reportUnknownArgumentType]
    for unsupported in ("callbacks", "links"):
        if operation.get(unsupported):
            warnings.append(f"{label}: {unsupported} are ignored")
    if operation.get("servers") or item.get("servers"):
        warnings.append(f"{label}: per-operation servers are ignored; the API base URL is used")
    input_schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        input_schema["required"] = required
    if converter.defs:
        input_schema["$defs"] = converter.defs
    output_schema, wrapped = success_schema(spec, operation)
    summary, details = operation.get("summary"), operation.get("description")
    description = "\n\n".join(str(x).strip() for x in (summary, details) if x and str(x).strip())
    return OperationTool(
        name=name,
        description=description or f"{method.upper()} {path}",
        method=method.upper(),
        path=path,
        input_schema=input_schema,
        output_schema=output_schema,
        bindings=bindings,
        read_only=method in READ_ONLY_METHODS,
        idempotent=method in IDEMPOTENT_METHODS,
        tags=tuple(str(tag) for tag in operation.get("tags") or []),
        operation_id=op_id,
        deprecated=operation.get("deprecated") is True,
        output_wrapped=wrapped,
        security=_security(operation.get("security", document.get("security"))),
    )


def _security(requirements: Any) -> tuple[Mapping[str, tuple[str, ...]], ...]:
    """Security requirements as data (`[{}]`, "no auth allowed", becomes an empty mapping)."""
    if not isinstance(requirements, list):
        return ()
    found: list[Mapping[str, tuple[str, ...]]] = []
    for requirement in cast(list[Any], requirements):
        if isinstance(requirement, dict):
            entries = cast(dict[str, Any], requirement).items()
            found.append({name: tuple(str(s) for s in scopes or ()) for name, scopes in entries})
    return tuple(found)


def _parameters(
    document: dict[str, Any], item: dict[str, Any], operation: dict[str, Any], ignored: list[str]
) -> list[dict[str, Any]]:
    """Path-item parameters overridden by operation ones (same name and location).

    Header parameters OpenAPI says to ignore are left out and appended to ``ignored``.
    """
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for raw in [*(item.get("parameters") or []), *(operation.get("parameters") or [])]:
        parameter = resolve_object(document, raw)
        if not isinstance(parameter, dict):
            continue
        location, name = parameter.get("in"), parameter.get("name")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
        if location == "header" and str(name).lower() in _IGNORED_HEADERS:
            ignored.append(str(name))  # pyright: ignore[reportUnknownArgumentType]
            continue
        merged[(str(location), str(name))] = parameter  # pyright: ignore[reportArgumentType]
    return sorted(merged.values(), key=lambda p: (_LOCATION_ORDER.get(p["in"], 9), p["name"]))


def _parameter_schema(parameter: dict[str, Any]) -> tuple[Any, str | None]:
    if "schema" in parameter:
        return parameter["schema"], None
    content: dict[str, Any] = parameter.get("content") or {}
    for media_type, media in content.items():
        return (media or {}).get("schema", {}), media_type
    return {}, None


def _pick_body_media(content: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    for media_type in sorted(content):
        if is_json_media(media_type):
            return media_type, content[media_type] or {}
    for media_type in _FORM_TYPES:
        if media_type in content:
            return media_type, content[media_type] or {}
    return None, {}


def _add_body(
    body: dict[str, Any],
    converter: SchemaConverter,
    label: str,
    properties: dict[str, Any],
    required: list[str],
    bindings: dict[str, Binding],
    warnings: list[str],
) -> None:
    """Add the ``body`` argument, or raise when a required body cannot be sent.

    Raises:
        ValueError: a required body with no JSON or form media type.
    """
    media_type, media = _pick_body_media(body.get("content") or {})
    if media_type is None:
        kinds = ", ".join(sorted(body.get("content") or {})) or "none"
        if body.get("required") is True:
            raise ValueError(f"request body media types not supported ({kinds})")
        warnings.append(f"{label}: optional request body ({kinds}) not supported; tool sends none")
        return
    if media_type == "multipart/form-data":
        warnings.append(f"{label}: multipart body sent as text fields only (no file uploads)")
    schema = converter.convert(media.get("schema", {}))
    if body.get("description") and isinstance(schema, dict) and "description" not in schema:
        schema = {**schema, "description": body["description"]}
    properties[BODY_ARGUMENT] = schema
    if body.get("required") is True:
        required.append(BODY_ARGUMENT)
    bindings[BODY_ARGUMENT] = Binding("body", BODY_ARGUMENT, content_type=media_type)
