"""Content types detected from the bytes (never trusted from the request): magic numbers by
puremagic, then text (UTF-8, or another encoding charset-normalizer recognises, without
control characters) or `application/octet-stream`."""

from __future__ import annotations

import fnmatch

import charset_normalizer
import puremagic

OCTET_STREAM = "application/octet-stream"
_SNIFF_BYTES = 8192


def detect(head: bytes) -> str:
    """The content type of bytes that start with `head`."""
    if not head:
        return OCTET_STREAM
    try:
        found = puremagic.from_string(head[:_SNIFF_BYTES], mime=True)
    except (puremagic.PureError, ValueError):
        found = ""
    if found:
        return str(found)
    text = _as_text(head[:_SNIFF_BYTES])
    if text is None or any(ord(c) < 32 and c not in "\t\n\r\f" for c in text):
        return OCTET_STREAM
    return "text/plain"


def _as_text(sample: bytes) -> str | None:
    try:
        return sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the sample's end is still text.
        if exc.start >= len(sample) - 3:
            return sample[: exc.start].decode("utf-8")
    # Text in a legacy encoding (Latin-1, Windows-1252, Shift JIS…), when it reads as text.
    best = charset_normalizer.from_bytes(sample).best()
    return None if best is None else str(best)


def allowed(content_type: str, patterns: list[str] | None) -> bool:
    """Whether `content_type` matches one of `patterns` (None: any)."""
    if patterns is None:
        return True
    essence = content_type.split(";", 1)[0].strip().lower()
    return any(fnmatch.fnmatchcase(essence, pattern.lower()) for pattern in patterns)


def compatible(declared: str, detected: str) -> bool:
    """Whether a declared content type may stand for what was detected: the same, or a
    more specific type of detected text or bytes (`text/markdown` for text)."""
    declared_essence = declared.split(";", 1)[0].strip().lower()
    if declared_essence == detected:
        return True
    if detected == "text/plain":
        return declared_essence.startswith("text/") or declared_essence in (
            "application/json",
            "application/xml",
            "application/yaml",
            "application/x-ndjson",
        )
    return detected == OCTET_STREAM and not declared_essence.startswith(("text/", "image/"))
