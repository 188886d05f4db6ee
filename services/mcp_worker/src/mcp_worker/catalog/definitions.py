"""Tool definitions: their canonical hash, the diff between two versions, and the catalog
entry built from a server's listing plus the operator's hints."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import mcp_types as types

from ferryman.contracts.mcp import DefinitionChange, ToolAnnotations, ToolEntry
from mcp_worker.registry import ServerConfig


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values, equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def tool_definition(tool: types.Tool) -> dict[str, Any]:
    """The parts of a tool a model and its caller rely on (what a rug pull would change)."""
    annotations = tool.annotations.model_dump(exclude_none=True) if tool.annotations else None
    return {
        "name": tool.name,
        "title": tool.title,
        "description": tool.description,
        "inputSchema": tool.input_schema,
        "outputSchema": tool.output_schema,
        "annotations": annotations,
    }


def definition_hash(definition: dict[str, Any]) -> str:
    """sha256 of the canonical definition."""
    return hashlib.sha256(canonical_json(definition).encode()).hexdigest()


def diff(old: Any, new: Any, path: str = "") -> list[DefinitionChange]:
    """The changed leaves between two JSON values, as JSON pointers (at most 100)."""
    changes: list[DefinitionChange] = []
    _diff(old, new, path, changes)
    return changes[:100]


def _diff(old: Any, new: Any, path: str, out: list[DefinitionChange]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):  # pyright: ignore[reportUnknownArgumentType]
            token = str(key).replace("~", "~0").replace("/", "~1")  # pyright: ignore[reportUnknownArgumentType]
            _diff(old.get(key), new.get(key), f"{path}/{token}", out)  # pyright: ignore[reportUnknownMemberType]
        return
    if old != new:
        out.append(DefinitionChange(path=path or "/", old=old, new=new))


def tool_entry(
    tool: types.Tool,
    config: ServerConfig,
    state: str = "available",
) -> tuple[ToolEntry, dict[str, Any]]:
    """The catalog entry of a listed tool (hints from the server, overridden by the registry
    file; tags from both) and its definition."""
    definition = tool_definition(tool)
    given = tool.annotations
    hints = config.tool_hints.get(tool.name)

    def pick(override: bool | None, hint: bool | None) -> bool | None:
        return override if override is not None else hint

    annotations = ToolAnnotations(
        title=given.title if given else None,
        read_only=pick(hints.read_only if hints else None, given.read_only_hint if given else None),
        destructive=pick(
            hints.destructive if hints else None, given.destructive_hint if given else None
        ),
        idempotent=pick(
            hints.idempotent if hints else None, given.idempotent_hint if given else None
        ),
        open_world=pick(
            hints.open_world if hints else None, given.open_world_hint if given else None
        ),
    )
    tags = sorted(set(config.tags) | set(hints.tags if hints else []) | _hint_tags(annotations))
    entry = ToolEntry(
        name=tool.name,
        description=tool.description,
        input_schema=tool.input_schema,
        output_schema=tool.output_schema,
        annotations=annotations,
        tags=tags,
        definition_hash=definition_hash(definition),
        state="quarantined" if state == "quarantined" else "available",
    )
    return entry, definition


def _hint_tags(annotations: ToolAnnotations) -> set[str]:
    tags: set[str] = set()
    if annotations.read_only:
        tags.add("read-only")
    if annotations.destructive:
        tags.add("destructive")
    if annotations.idempotent:
        tags.add("idempotent")
    if annotations.open_world:
        tags.add("open-world")
    return tags


def may_retry(entry: ToolEntry) -> bool:
    """Whether a transport failure may be retried: read-only or idempotent, never destructive
    (MCP's default for an unannotated tool is destructive)."""
    hints = entry.annotations
    if hints.destructive:
        return False
    return bool(hints.read_only or hints.idempotent)


def may_cache(entry: ToolEntry, mode: str) -> bool:
    """Whether results of the tool may be cached under the server's cache mode."""
    if mode == "off":
        return False
    if mode == "on":
        return True
    return may_retry(entry)
