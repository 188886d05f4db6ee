"""Turning OpenAPI Schema Objects into standalone JSON Schema 2020-12.

Local ``$ref``s used once in a tool schema are inlined. Two kinds become
``{"$ref": "#/$defs/<name>"}`` with the target emitted once under the tool
schema's root ``$defs``: refs that sit on a cycle (a ``Node`` whose ``children``
are ``Node``s), so conversion terminates and ``jsonschema`` can still validate
recursive data; and refs reached more than once from the tool's schemas, because
inlining every use copies a shared component as often as it is reached (real
documents reach the same few components thousands of times: megabytes per tool).

``allOf`` is kept as written. Merging it into one object is tempting but wrong:
a member with ``additionalProperties: false`` would then reject the properties
the other members contribute, and every call would fail validation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_VALUES = (
    "items",
    "additionalProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
    "contains",
    "propertyNames",
    "not",
    "if",
    "then",
    "else",
    "contentSchema",
)
# OpenAPI-only keywords with no JSON Schema meaning; dropped from tool schemas.
_OPENAPI_ONLY = ("nullable", "discriminator", "xml", "externalDocs", "example")


def resolve_pointer(document: Any, ref: str) -> Any:
    """Return the node a local ``#/...`` reference points to.

    Raises:
        ValueError: if ``ref`` is not local or does not resolve.
    """
    if not ref.startswith("#"):
        raise ValueError(f"$ref {ref!r} is not local")
    node = document
    pointer = ref[1:]
    if not pointer:
        return node
    for raw in pointer.lstrip("/").split("/"):
        token = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]  # pyright: ignore[reportUnknownVariableType]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):  # pyright: ignore[reportUnknownArgumentType]
            node = node[int(token)]  # pyright: ignore[reportUnknownVariableType]
        else:
            raise ValueError(f"$ref {ref!r} does not resolve")
    return node  # pyright: ignore[reportUnknownVariableType]


def resolve_object(document: Any, node: Any, *, limit: int = 32) -> Any:
    """Follow a chain of ``$ref``s on a non-schema object (parameter, response…).

    Raises:
        ValueError: on a dangling or endlessly chained reference.
    """
    for _ in range(limit):
        if not (isinstance(node, dict) and isinstance(node.get("$ref"), str)):
            return node  # pyright: ignore[reportUnknownVariableType]
        node = resolve_pointer(document, node["$ref"])
    raise ValueError("$ref chain too long (cyclic reference between non-schema objects?)")


class SchemaConverter:
    """Converts schemas of one document; one instance per tool schema (shares ``$defs``)."""

    def __init__(
        self,
        document: dict[str, Any],
        *,
        openapi_30: bool,
        mode: str,
        sources: Iterable[Any] = (),
    ) -> None:
        """Args:
        document: The bundled OpenAPI document refs resolve against.
        openapi_30: Apply 3.0 rules (``nullable``, boolean exclusive bounds).
        mode: ``"input"`` (drop ``readOnly`` properties from ``required``) or
            ``"output"`` (drop ``writeOnly`` ones).
        sources: Every schema this converter will convert; a ref they reach
            more than once goes to ``$defs`` instead of being copied.
        """
        self._document = document
        self._openapi_30 = openapi_30
        self._skip_required_flag = "readOnly" if mode == "input" else "writeOnly"
        self._def_names: dict[str, str] = {}
        self._defs: dict[str, Any] = {}
        self._cyclic: dict[str, bool] = {}
        self._uses = _count_uses(document, sources)

    @property
    def defs(self) -> dict[str, Any]:
        """The ``$defs`` the converted schemas refer to (empty when acyclic)."""
        return dict(sorted(self._defs.items()))

    def convert(self, schema: Any) -> Any:
        """Return the JSON Schema 2020-12 form of an OpenAPI Schema Object.

        Raises:
            ValueError: on a dangling ``$ref``.
        """
        return self._convert(schema, stack=())

    def _convert(self, schema: Any, *, stack: tuple[str, ...]) -> Any:
        if isinstance(schema, bool) or not isinstance(schema, dict):
            return schema  # pyright: ignore[reportUnknownVariableType]
        ref = schema.get("$ref")
        siblings = {k: v for k, v in schema.items() if k != "$ref"}  # pyright: ignore[reportUnknownVariableType]
        if isinstance(ref, str):
            extra = self._convert_keywords(siblings, stack=stack) if siblings else {}
            if self._uses.get(ref, 0) > 1 or self._is_cyclic(ref):
                return {"$ref": f"#/$defs/{self._define(ref)}", **extra}
            target = self._convert(resolve_pointer(self._document, ref), stack=(*stack, ref))
            return {**target, **extra} if isinstance(target, dict) else target  # pyright: ignore[reportUnknownVariableType]
        return self._convert_keywords(schema, stack=stack)  # pyright: ignore[reportUnknownArgumentType]

    def _convert_keywords(
        self, schema: dict[str, Any], *, stack: tuple[str, ...]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key in _OPENAPI_ONLY:
                continue
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                out[key] = {name: self._convert(sub, stack=stack) for name, sub in value.items()}  # pyright: ignore[reportUnknownVariableType]
            elif key in _SCHEMA_LISTS and isinstance(value, list):
                out[key] = [self._convert(sub, stack=stack) for sub in value]  # pyright: ignore[reportUnknownVariableType]
            elif key in _SCHEMA_VALUES:
                out[key] = self._convert(value, stack=stack)
            else:
                out[key] = value
        if "example" in schema and "examples" not in out:
            out["examples"] = [schema["example"]]
        if self._openapi_30:
            _apply_30_rules(schema, out)
        required = out.get("required")
        properties = out.get("properties")
        if isinstance(required, list) and isinstance(properties, dict):
            kept = [
                name
                for name in required
                if not _has_flag(properties.get(name), self._skip_required_flag)
            ]  # pyright: ignore[reportUnknownVariableType]
            if kept:
                out["required"] = kept
            else:
                del out["required"]
        return out

    def _define(self, ref: str) -> str:
        name = self._def_names.get(ref)
        if name is None:
            name = self._unique_def_name(ref)
            self._def_names[ref] = name
            self._defs[name] = {}  # reserved before converting so self-references stop here
            self._defs[name] = self._convert(resolve_pointer(self._document, ref), stack=(ref,))
        return name

    def _unique_def_name(self, ref: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", unquote(ref.rsplit("/", 1)[-1])) or "schema"
        name, counter = base, 2
        taken = set(self._def_names.values())
        while name in taken:
            name, counter = f"{base}_{counter}", counter + 1
        return name

    def _is_cyclic(self, ref: str) -> bool:
        """Whether ``ref`` can reach itself through other refs."""
        if ref not in self._cyclic:
            seen: set[str] = set()
            todo = list(refs_in(resolve_pointer(self._document, ref)))
            while todo:
                current = todo.pop()
                if current in seen:
                    continue
                seen.add(current)
                if current == ref:
                    break
                todo.extend(refs_in(resolve_pointer(self._document, current)))
            self._cyclic[ref] = ref in seen
        return self._cyclic[ref]


def _count_uses(document: dict[str, Any], sources: Iterable[Any]) -> dict[str, int]:
    """How many places reached from ``sources`` refer to each ref.

    A ref's target is walked once however often it is referred to, so this is
    linear in the document. Dangling refs are left for conversion to report.
    """
    uses: dict[str, int] = {}
    todo = list(sources)
    while todo:
        for ref in refs_in(todo.pop()):
            uses[ref] = uses.get(ref, 0) + 1
            if uses[ref] == 1:
                try:
                    todo.append(resolve_pointer(document, ref))
                except ValueError:
                    continue
    return uses


def refs_in(node: Any) -> list[str]:
    """Every `$ref` string anywhere in `node`."""
    found: list[str] = []
    stack: list[Any] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            ref = current.get("$ref")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
            if isinstance(ref, str):
                found.append(ref)
            stack.extend(current.values())  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
        elif isinstance(current, list):
            stack.extend(current)  # pyright: ignore[reportUnknownArgumentType]
    return found


def _has_flag(schema: Any, flag: str) -> bool:
    return isinstance(schema, dict) and schema.get(flag) is True


def _apply_30_rules(source: dict[str, Any], out: dict[str, Any]) -> None:
    """3.0 ``nullable`` becomes a type list; boolean exclusive bounds become numbers."""
    if source.get("nullable") is True:
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        if isinstance(out.get("enum"), list) and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        flag = out.get(exclusive)
        if flag is True and bound in out:
            out[exclusive] = out.pop(bound)
        elif isinstance(flag, bool):
            del out[exclusive]
