"""Credential references in the registry file (the kit's `env:VAR` / `file:/path`), and
the registry's error."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import SecretStr

from ferryman_runtime import references
from ferryman_runtime.references import is_reference

__all__ = ["RegistryError", "is_reference", "resolve"]


class RegistryError(ValueError):
    """The registry file is invalid; the message names the server and the field."""


def resolve(
    value: str,
    environ: Mapping[str, str],
    read_file: Callable[[Path], str] = lambda path: path.read_text(encoding="utf-8"),
) -> SecretStr:
    """The value a reference points to (a literal value as it is).

    Raises:
        RegistryError: the variable is unset or the file cannot be read (the message names
            the reference, never a value).
    """
    try:
        return references.resolve(value, environ, read_file)
    except references.UnresolvedReference as exc:
        raise RegistryError(str(exc)) from None
