"""Removing credentials from text that came from an upstream (error bodies, messages).

A provider, or a proxy in front of it, may echo the request's `Authorization`,
`api-key` or `x-goog-api-key` header in an error. Adapters pass every upstream
message through `redact` before it reaches a log, an event, a metric or `/health`.

Two nets: the exact key values the caller knows (its configured keys), and the
shapes keys take (`sk-…`, `sk-ant-…`, `AIza…`, bearer tokens, JWTs, Azure keys,
credential headers, query parameters and URL passwords) for keys it does not know, such as one
a proxy injected.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"

MIN_SECRET_LENGTH = 8
"""Known values shorter than this are not searched for: they would erase ordinary words
(a local server's placeholder key such as `unused`), and are no real credential."""

_HEADER_NAMES = (
    r"authorization|proxy-authorization|api[-_]?key|x-api-key|x-goog-api-key"
    r"|ocp-apim-subscription-key|x-functions-key|cookie|set-cookie"
)
_SHAPES = re.compile(
    "|".join(
        (
            # A credential header, as `name: value` or JSON `"name": "value"`; the value runs
            # to the end of the quoted string or line.
            rf"""(?P<header>(?:{_HEADER_NAMES})\\?["']?\s*[:=]\s*\\?["']?)[^"'\\\r\n,}}]+""",
            # A credential in a URL's query (`?key=…`, `&api_key=…`, `&sig=…`), including the
            # signatures of presigned URLs (S3, GCS, Azure SAS, the local backend's).
            r"(?P<param>[?&](?:key|api[-_]?key|access_token|token|sig|code|signature"
            r"|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature"
            r"|x-goog-credential)=)[^&\s\"'#]+",
            r"(?P<scheme>\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]+",
            # A URL's password (`scheme://user:password@host`), also one holding an unencoded
            # `/`, `#` or `?` (up to the `@`).
            r"(?P<userinfo>\b[a-z][a-z0-9+.-]*://[^\s/:@\"'<>]*:)[^\s@\"'<>]+(?=@)",
            r"\bsk-(?:ant-)?[A-Za-z0-9_*-]{8,}",  # OpenAI, Anthropic (also masked `sk-…***`)
            r"\bAIza[A-Za-z0-9_-]{20,}",  # Google API keys
            r"\beyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]*",  # JWTs (Entra ID)
            r"\b[0-9a-fA-F]{32}\b",  # Azure (Cognitive Services) keys, 32 hex digits
            r"\b[A-Za-z0-9]{84}\b",  # Azure OpenAI keys, 84 characters
        )
    ),
    re.IGNORECASE,
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Return `text` with credentials replaced by `[REDACTED]`.

    Args:
        text: upstream text (an error message or body).
        secrets: exact values to remove (configured keys); None and short values are skipped.
    """
    # Longest first: a key that contains another key must go whole.
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len)[::-1]:
        text = text.replace(secret, REDACTED)
    return _SHAPES.sub(_replacement, text)


def _replacement(match: re.Match[str]) -> str:
    keep = (
        match.group("header")
        or match.group("param")
        or match.group("scheme")
        or match.group("userinfo")
        or ""
    )
    return keep + REDACTED
