"""Object keys in a tenant's space: normalised, and refused when they try to leave it.

A key is `/`-separated segments of printable text. Refused, with a message naming the
rule: empty or over 1024 bytes; a leading `/` (absolute), an empty segment (`a//b`), a `.`
or `..` segment, a trailing `/`; a backslash; a NUL or any control or format character;
a percent-encoded `/`, `\\`, `.` or `%` (`%2F`, `%5c`, `%2E`, `%25`), which a backend or
proxy could decode into a separator; and any character that Unicode compatibility
normalisation (NFKC) turns into a `/`, `\\` or `.` (the fullwidth solidus U+FF0F,
the one-dot leader U+2024, …), and the slashes it leaves alone (the division slash U+2215,
the fraction slash U+2044, …). What passes is the NFC form of the key.
"""

from __future__ import annotations

import re
import unicodedata

MAX_KEY_BYTES = 1024
_ENCODED = re.compile(r"%(2f|5c|2e|25)", re.IGNORECASE)
_SEPARATORS = frozenset("/\\.")
_LOOK_ALIKES = frozenset("\u2215\u2044\u29f8\u29f9\u2216\u2571\u2572\u1735\u0338\u20e5")
"""Slashes and backslashes that NFKC leaves as they are (division slash, fraction slash, …)."""


class KeyRefused(ValueError):
    """The key is refused; the message says why (and never echoes more than 100 chars)."""


def normalise_key(key: str, *, allow_empty: bool = False, folder: bool = False) -> str:
    """The NFC form of `key`, checked.

    Args:
        key: a key (or, with `allow_empty`/`folder`, a listing prefix) in the tenant's space.
        allow_empty: `""` is accepted (a listing of the whole space).
        folder: a trailing `/` is accepted (a listing prefix).

    Raises:
        KeyRefused: the key is refused.
    """
    if key == "" and allow_empty:
        return key
    shown = repr(key[:100])
    if not key:
        raise KeyRefused("the key is empty")
    key = unicodedata.normalize("NFC", key)
    if len(key.encode()) > MAX_KEY_BYTES:
        raise KeyRefused(f"the key {shown}… is longer than {MAX_KEY_BYTES} bytes")
    for char in key:
        category = unicodedata.category(char)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn") or char == "\x00":
            raise KeyRefused(f"the key {shown} holds a control or unassigned character")
        if char == "\\":
            raise KeyRefused(f"the key {shown} holds a backslash")
        if char in _LOOK_ALIKES or (
            char not in _SEPARATORS and _SEPARATORS & set(unicodedata.normalize("NFKC", char))
        ):
            raise KeyRefused(f"the key {shown} holds {char!r}, which stands for a separator")
    if _ENCODED.search(key):
        raise KeyRefused(f"the key {shown} holds a percent-encoded separator")
    if key.startswith("/"):
        raise KeyRefused(f"the key {shown} is absolute")
    body = key[:-1] if folder and key.endswith("/") else key
    segments = body.split("/")
    if any(segment == "" for segment in segments):
        raise KeyRefused(f"the key {shown} has an empty segment (or a trailing /)")
    if any(segment in (".", "..") for segment in segments):
        raise KeyRefused(f"the key {shown} has a . or .. segment")
    return key
