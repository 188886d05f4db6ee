"""What Docker Compose does with several `-f` files, for the structural tests where no compose
plugin is installed: the `!override`/`!reset` tags, the merge rules and `${VAR…}`
interpolation of the Compose specification (merge.md, interpolation.md), limited to what
Ferryman's compose files use."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


class Override:
    """A value tagged `!override`: it replaces the earlier one instead of merging with it."""

    def __init__(self, value: Any) -> None:
        self.value = value


class Reset:
    """A value tagged `!reset`: the earlier value is removed."""


class ComposeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that keeps Compose's merge tags."""


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    return Override(loader.construct_scalar(node))  # pyright: ignore[reportArgumentType]


ComposeLoader.add_constructor("!override", _override)
ComposeLoader.add_constructor("!reset", lambda _loader, _node: Reset())


def load(path: Path) -> dict[str, Any]:
    """One compose file, its merge tags kept as `Override` and `Reset`."""
    document: dict[str, Any] = yaml.load(path.read_text(), Loader=ComposeLoader)
    return document


def merge(base: Any, update: Any) -> Any:
    """`update` merged onto `base`: mappings by key, sequences appended, scalars replaced;
    `!override` replaces and `!reset` removes (the caller drops `Reset` values)."""
    if isinstance(update, Override):
        return update.value
    if isinstance(base, dict) and isinstance(update, dict):
        merged: dict[Any, Any] = dict(base)  # pyright: ignore[reportUnknownArgumentType]
        for key, value in update.items():  # pyright: ignore[reportUnknownVariableType]
            if isinstance(value, Reset):
                merged.pop(key, None)
            else:
                merged[key] = merge(merged[key], value) if key in merged else _plain(value)
        return merged
    if isinstance(base, list) and isinstance(update, list):
        return [*base, *update]  # pyright: ignore[reportUnknownVariableType]
    return _plain(update)


def _plain(value: Any) -> Any:
    """A value added where the base had none: its own tags no longer matter."""
    if isinstance(value, Override):
        return value.value
    if isinstance(value, dict):
        return {
            key: _plain(item)
            for key, item in value.items()  # pyright: ignore[reportUnknownVariableType]
            if not isinstance(item, Reset)
        }
    return value


_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class InterpolationError(ValueError):
    """A `${VAR:?message}` whose variable is unset or empty (Compose refuses to start)."""


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """`text` with `$$`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}` and
    `${VAR?err}` resolved against `environ`.

    Raises:
        InterpolationError: a required variable is missing (the message names it).
    """

    def resolve(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        value = environ.get(name)
        missing = value is None or (value == "" and op is not None and op.startswith(":"))
        if op is not None and op.endswith("?") and missing:
            raise InterpolationError(f"{name}: {arg}")
        if op is not None and op.endswith("-") and missing:
            return arg
        return value or ""

    return _VARIABLE.sub(resolve, text)


def active_services(compose: dict[str, Any], profiles: set[str] | None = None) -> set[str]:
    """Services `docker compose up` starts: those without profiles, or with an enabled one."""
    enabled = profiles or set()
    return {
        name
        for name, service in compose["services"].items()
        if not service.get("profiles") or enabled & set(service["profiles"])
    }
