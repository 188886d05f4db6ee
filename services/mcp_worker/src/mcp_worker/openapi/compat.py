"""Compatibility report between two versions of one API's tools.

Operations are matched by method and path template (parameter names ignored,
so ``/pets/{id}`` matches ``/pets/{petId}``). Schemas are compared on the
generated tool schemas, so the report speaks in tool-argument terms: ``body.name``
rather than a JSON pointer into the spec. Composition keywords (``allOf`` /
``anyOf`` / ``oneOf``) are not analysed; a change there is reported as
``changed_composition`` without claiming it is breaking.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from mcp_worker.openapi.operations import ApiTools, OperationTool, api_tools
from mcp_worker.openapi.spec import ApiSpec, canonical_json

CompatKind = Literal[
    "removed_operation",
    "added_operation",
    "renamed_operation",
    "new_required_parameter",
    "removed_parameter",
    "added_optional_parameter",
    "changed_type",
    "narrowed_enum",
    "widened_response_enum",
    "removed_response_field",
    "removed_output_schema",
    "changed_composition",
]
Direction = Literal["input", "output"]
_COMPOSITION = ("allOf", "anyOf", "oneOf")


@dataclass(frozen=True)
class CompatEntry:
    """One difference between the old and the new version of an operation."""

    operation: str
    """``"METHOD /path"`` (the new path when it exists in both)."""
    kind: CompatKind
    breaking: bool
    detail: str


@dataclass(frozen=True)
class CompatReport:
    """All differences, breaking ones first."""

    old_version: str
    new_version: str
    entries: tuple[CompatEntry, ...]

    @property
    def breaking(self) -> bool:
        """True when any entry would break an existing caller."""
        return any(entry.breaking for entry in self.entries)


def compare(
    old: ApiSpec, new: ApiSpec, tools: Callable[[ApiSpec], ApiTools] = api_tools
) -> CompatReport:
    """Compare every operation of ``old`` with its counterpart in ``new``.

    Args:
        old: the document served so far.
        new: the document to serve.
        tools: the tools of a document (default: every operation, named by operationId);
            a registry entry passes its own selection and names.

    Raises:
        ValueError: never for valid specs; propagated from tool generation.
    """
    old_tools = {_key(tool): tool for tool in tools(old).tools}
    new_tools = {_key(tool): tool for tool in tools(new).tools}
    entries: list[CompatEntry] = []
    for key in sorted(old_tools.keys() - new_tools.keys()):
        tool = old_tools[key]
        entries.append(
            CompatEntry(_label(tool), "removed_operation", True, f"tool {tool.name!r} is gone")
        )
    for key in sorted(new_tools.keys() - old_tools.keys()):
        tool = new_tools[key]
        entries.append(
            CompatEntry(_label(tool), "added_operation", False, f"new tool {tool.name!r}")
        )
    for key in sorted(old_tools.keys() & new_tools.keys()):
        entries.extend(_compare_tools(old_tools[key], new_tools[key]))
    entries.sort(key=lambda entry: (not entry.breaking, entry.operation, entry.kind, entry.detail))
    return CompatReport(old_version=old.version, new_version=new.version, entries=tuple(entries))


def _key(tool: OperationTool) -> tuple[str, str]:
    return tool.method, re.sub(r"\{[^}]*\}", "{}", tool.path)


def _label(tool: OperationTool) -> str:
    return f"{tool.method} {tool.path}"


def _compare_tools(old: OperationTool, new: OperationTool) -> list[CompatEntry]:
    label = _label(new)
    entries: list[CompatEntry] = []
    if old.name != new.name:
        entries.append(
            CompatEntry(label, "renamed_operation", True, f"tool {old.name!r} is now {new.name!r}")
        )
    walker = _SchemaDiff(label, old.input_schema, new.input_schema, "input")
    walker.compare(old.input_schema, new.input_schema, "")
    entries.extend(walker.entries)
    if old.output_schema is not None and new.output_schema is None:
        entries.append(
            CompatEntry(
                label, "removed_output_schema", True, "the success response has no JSON schema"
            )
        )
    elif old.output_schema is not None and new.output_schema is not None:
        walker = _SchemaDiff(label, old.output_schema, new.output_schema, "output")
        walker.compare(old.output_schema, new.output_schema, "")
        entries.extend(walker.entries)
    return entries


class _SchemaDiff:
    """Walks two tool schemas in parallel, following ``#/$defs`` refs once."""

    def __init__(
        self, label: str, old_root: dict[str, Any], new_root: dict[str, Any], direction: Direction
    ) -> None:
        self._label = label
        self._roots = (old_root, new_root)
        self._direction = direction
        self._seen: set[tuple[str, str]] = set()
        self.entries: list[CompatEntry] = []

    def _add(self, kind: CompatKind, breaking: bool, detail: str) -> None:
        self.entries.append(CompatEntry(self._label, kind, breaking, detail))

    def _deref(self, schema: Any, root: dict[str, Any]) -> Any:
        if isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
            name = str(schema["$ref"]).removeprefix("#/$defs/")  # pyright: ignore[reportUnknownArgumentType]
            return root.get("$defs", {}).get(name, {})
        return schema  # pyright: ignore[reportUnknownVariableType]

    def compare(self, old: Any, new: Any, where: str) -> None:
        refs = (
            old.get("$ref", "") if isinstance(old, dict) else "",  # pyright: ignore[reportUnknownMemberType]
            new.get("$ref", "") if isinstance(new, dict) else "",  # pyright: ignore[reportUnknownMemberType]
        )
        if refs[0] or refs[1]:
            if refs in self._seen:
                return
            self._seen.add((str(refs[0]), str(refs[1])))  # pyright: ignore[reportUnknownArgumentType]
        old, new = self._deref(old, self._roots[0]), self._deref(new, self._roots[1])
        if not isinstance(old, dict) or not isinstance(new, dict):
            return
        # allOf members are compared as one object: their properties and requirements.
        old = self._flattened(old, self._roots[0], 0)  # pyright: ignore[reportUnknownArgumentType]
        new = self._flattened(new, self._roots[1], 0)  # pyright: ignore[reportUnknownArgumentType]
        name = where or "(arguments)" if self._direction == "input" else where or "(response)"
        self._compare_types(old, new, name)  # pyright: ignore[reportUnknownArgumentType]
        self._compare_enums(old, new, name)  # pyright: ignore[reportUnknownArgumentType]
        for keyword in _COMPOSITION:
            if keyword == "allOf":
                continue  # flattened above, so analysed
            old_part, new_part = old.get(keyword), new.get(keyword)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
            if canonical_json(old_part) != canonical_json(new_part):
                self._add("changed_composition", False, f"{name}: {keyword} changed (not analysed)")
        self._compare_properties(old, new, where)  # pyright: ignore[reportUnknownArgumentType]
        if "items" in old and "items" in new:
            self.compare(old["items"], new["items"], f"{where}[]")

    def _flattened(
        self, schema: dict[str, Any], root: dict[str, Any], depth: int
    ) -> dict[str, Any]:
        """`schema` with the properties and requirements of its `allOf` members merged in."""
        members = schema.get("allOf")
        if not isinstance(members, list) or depth > _MAX_ALL_OF_DEPTH:
            return schema
        merged = {key: value for key, value in schema.items() if key != "allOf"}
        properties: dict[str, Any] = dict(merged.get("properties") or {})
        required: set[str] = set(merged.get("required") or [])
        for member in members:  # pyright: ignore[reportUnknownVariableType]
            part = self._deref(member, root)
            if not isinstance(part, dict):
                continue
            part = self._flattened(part, root, depth + 1)  # pyright: ignore[reportUnknownArgumentType]
            properties.update(part.get("properties") or {})
            required.update(part.get("required") or [])
            if "type" not in merged and "type" in part:
                merged["type"] = part["type"]
        merged["properties"] = properties
        merged["required"] = sorted(required)
        return merged

    def _compare_types(self, old: dict[str, Any], new: dict[str, Any], name: str) -> None:
        old_types, new_types = _types(old), _types(new)
        if old_types is None or new_types is None or old_types == new_types:
            if old_types is not None and new_types is None and self._direction == "output":
                self._add(
                    "changed_type", True, f"{name}: type {sorted(old_types)} is now unconstrained"
                )
            elif old_types is None and new_types is not None and self._direction == "input":
                self._add(
                    "changed_type",
                    True,
                    f"{name}: any type was accepted, now only {sorted(new_types)}",
                )
            return
        lost = old_types - new_types if self._direction == "input" else new_types - old_types
        if lost:
            self._add(
                "changed_type", True, f"{name}: type {sorted(old_types)} -> {sorted(new_types)}"
            )

    def _compare_enums(self, old: dict[str, Any], new: dict[str, Any], name: str) -> None:
        old_enum, new_enum = old.get("enum"), new.get("enum")
        if self._direction == "input" and isinstance(new_enum, list):
            if not isinstance(old_enum, list):
                self._add("narrowed_enum", True, f"{name}: now limited to {new_enum!r}")
                return
            dropped = [v for v in old_enum if v not in new_enum]  # pyright: ignore[reportUnknownVariableType]
            if dropped:
                self._add("narrowed_enum", True, f"{name}: no longer accepts {dropped!r}")
        if self._direction == "output" and isinstance(old_enum, list):
            added = (
                [v for v in new_enum if v not in old_enum]
                if isinstance(new_enum, list)
                else ["(any)"]
            )  # pyright: ignore[reportUnknownVariableType]
            if added:
                self._add("widened_response_enum", False, f"{name}: may now return {added!r}")

    def _compare_properties(self, old: dict[str, Any], new: dict[str, Any], where: str) -> None:
        old_props: dict[str, Any] = old.get("properties") or {}
        new_props: dict[str, Any] = new.get("properties") or {}
        old_required = set(old.get("required") or [])
        new_required = set(new.get("required") or [])
        prefix = f"{where}." if where else ""
        for prop in sorted(old_props.keys() - new_props.keys()):
            if self._direction == "input":
                self._add("removed_parameter", True, f"{prefix}{prop}: no longer accepted")
            else:
                self._add("removed_response_field", True, f"{prefix}{prop}: no longer returned")
        for prop in sorted(new_props.keys() - old_props.keys()):
            if self._direction == "input":
                if prop in new_required:
                    self._add("new_required_parameter", True, f"{prefix}{prop}: new and required")
                else:
                    self._add("added_optional_parameter", False, f"{prefix}{prop}: new, optional")
        for prop in sorted(old_props.keys() & new_props.keys()):
            if self._direction == "input" and prop in new_required and prop not in old_required:
                self._add("new_required_parameter", True, f"{prefix}{prop}: now required")
            if self._direction == "output" and prop in old_required and prop not in new_required:
                self._add(
                    "removed_response_field", True, f"{prefix}{prop}: no longer always returned"
                )
            self.compare(old_props[prop], new_props[prop], f"{prefix}{prop}")


_MAX_ALL_OF_DEPTH = 16
"""Nested allOf levels merged at most (a cyclic allOf stops there)."""


def _types(schema: dict[str, Any]) -> set[str] | None:
    kind = schema.get("type")
    if isinstance(kind, str):
        types = {kind}
    elif isinstance(kind, list):
        types = {str(k) for k in kind}  # pyright: ignore[reportUnknownVariableType]
    else:
        return None
    if "number" in types:
        types.add("integer")  # integer values are numbers, so number ⊇ integer
    return types
