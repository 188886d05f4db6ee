"""The output schema of an operation as a tool: the JSON bodies of its 2xx responses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from mcp_worker.openapi.schemas import SchemaConverter, resolve_object
from mcp_worker.openapi.spec import ApiSpec


def is_json_media(media_type: str) -> bool:
    """Whether a media type carries JSON (`application/json`, `*+json`, or `*/*`)."""
    essence = media_type.split(";", 1)[0].strip().lower()
    return essence == "application/json" or essence.endswith("+json") or essence == "*/*"


def success_schema(spec: ApiSpec, operation: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The schema of every 2xx JSON body (``anyOf`` when they differ, e.g. a 200 result and
    a 202 "not ready yet"), wrapped as ``{"result": ...}`` unless each one is an object."""
    sources: list[Any] = []
    responses: dict[str, Any] = operation.get("responses") or {}
    for status in sorted(str(code) for code in responses):
        if not (status.startswith("2") and len(status) == 3):
            continue
        response = resolve_object(spec.document, responses[status])
        content: dict[str, Any] = (
            response.get("content") or {} if isinstance(response, dict) else {}
        )  # pyright: ignore[reportUnknownMemberType]
        schemas = (
            media["schema"]
            for media_type, media in sorted(content.items())
            if is_json_media(media_type) and isinstance(media, dict) and "schema" in media
        )
        schema = next(schemas, None)
        if schema is not None and schema not in sources:
            sources.append(schema)
    if not sources:
        return None, False
    openapi_30 = spec.openapi.startswith("3.0")
    converter = SchemaConverter(
        spec.document, openapi_30=openapi_30, mode="output", sources=sources
    )
    members: list[Any] = [converter.convert(source) for source in sources]
    wrapped = not all(_is_object(m, converter.defs) for m in members)
    union: Any = members[0] if len(members) == 1 else {"anyOf": members}
    root: dict[str, Any]
    if wrapped:
        root = {"type": "object", "properties": {"result": union}, "required": ["result"]}
    else:
        root = {"type": "object", **union}
    if converter.defs:
        root["$defs"] = {**root.get("$defs", {}), **converter.defs}
    return root, wrapped


def _is_object(schema: Any, defs: Mapping[str, Any], depth: int = 0) -> bool:
    """Whether every instance of `schema` is an object: `type: object`, a local `$ref` to
    such a schema, or an `allOf` with such a member (MCP wants object results unwrapped)."""
    if not isinstance(schema, dict) or depth > 16:
        return False
    node = cast(dict[str, Any], schema)
    if node.get("type") == "object":
        return True
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _is_object(defs.get(ref.removeprefix("#/$defs/")), defs, depth + 1)
    parts = node.get("allOf")
    return isinstance(parts, list) and any(
        _is_object(part, defs, depth + 1) for part in cast(list[Any], parts)
    )
