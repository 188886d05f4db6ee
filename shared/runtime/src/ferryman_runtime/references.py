"""Credential references: `env:VAR` (the worker's environment) or `file:/path` (a mounted
secret), so a configuration file never holds a secret and can be committed and shown."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import SecretStr

REFERENCE_PATTERN = r"(env:[A-Za-z_][A-Za-z0-9_]*|file:/\S+)"
_REFERENCE = re.compile(REFERENCE_PATTERN)


class UnresolvedReference(ValueError):
    """A reference that cannot be resolved; the message names it, never a value."""


def is_reference(value: str) -> bool:
    """Whether `value` is a credential reference (`env:VAR` or `file:/path`)."""
    return _REFERENCE.fullmatch(value) is not None


def resolve(
    value: str,
    environ: Mapping[str, str],
    read_file: Callable[[Path], str] = lambda path: path.read_text(encoding="utf-8"),
) -> SecretStr:
    """The value a reference points to (a literal value as it is).

    Raises:
        UnresolvedReference: the variable is unset or the file cannot be read.
    """
    if value.startswith("env:") and is_reference(value):
        name = value[4:]
        if name not in environ:
            raise UnresolvedReference(f"credential reference {value!r}: the variable is not set")
        return SecretStr(environ[name])
    if value.startswith("file:") and is_reference(value):
        path = Path(value[5:])
        try:
            return SecretStr(read_file(path).strip())
        except OSError as exc:
            raise UnresolvedReference(
                f"credential reference {value!r}: {type(exc).__name__}"
            ) from None
    return SecretStr(value)
