"""Tool and argument names: stable, readable, within ``[A-Za-z0-9_.-]{1,128}``."""

from __future__ import annotations

import re

TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
BODY_ARGUMENT = "body"
"""The argument that carries the request body; parameters never take this name."""


def sanitize_name(raw: str) -> str:
    """Map any string onto ``[A-Za-z0-9_.-]{1,128}`` (invalid characters become ``_``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", raw)[:128]
    return cleaned or "operation"


def fallback_name(method: str, path: str) -> str:
    """A readable, stable name: ``GET /pets/{petId}`` -> ``get_pets_by_petId``."""
    parts = [method.lower()]
    for segment in (s for s in path.split("/") if s):
        template = re.fullmatch(r"\{(.+)\}", segment)
        parts.append(f"by_{template.group(1)}" if template else segment)
    if len(parts) == 1:
        parts.append("root")
    return sanitize_name(
        re.sub(r"_+", "_", "_".join(re.sub(r"[^A-Za-z0-9]", "_", p) for p in parts)).strip("_")
    )


def argument_names(keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Argument names: sanitised spec names, prefixed by location when two collide."""
    base = {key: sanitize_name(key[1]) for key in keys}
    counts: dict[str, int] = {}
    for name in base.values():
        counts[name] = counts.get(name, 0) + 1
    names: dict[tuple[str, str], str] = {}
    taken = {BODY_ARGUMENT}
    for key in keys:
        name = base[key]
        if counts[name] > 1 or name in taken:
            name = sanitize_name(f"{key[0]}_{name}")
        candidate, counter = name, 2
        while candidate in taken:
            candidate, counter = f"{name}_{counter}", counter + 1
        taken.add(candidate)
        names[key] = candidate
    return names
