"""Content types detected from the bytes (never trusted from the request): magic numbers by
puremagic, then text (UTF-8 without control characters) or `application/octet-stream`."""

from __future__ import annotations

import fnmatch

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
    sample = head[:_SNIFF_BYTES]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the sample's end is still text.
        if exc.start < len(sample) - 3:
            return OCTET_STREAM
        text = sample[: exc.start].decode("utf-8")
    if any(ord(c) < 32 and c not in "\t\n\r\f" for c in text):
        return OCTET_STREAM
    return "text/plain"


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
