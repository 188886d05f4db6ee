"""What counts as text already, how its bytes become characters, and how text is cut and
labelled for the model."""

from __future__ import annotations

import codecs

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
"""The image types every provider adapter takes (OpenAI, Azure, Anthropic, Gemini)."""

_RAW_TEXT_APPLICATION = frozenset({"application/json", "application/xml", "application/yaml"})
_CONVERTED_TEXT = frozenset({"text/html"})
"""`text/*` types whose markup the text pipeline strips."""

MAX_BYTES_PER_CHAR = 4
"""UTF-8's longest character: reading this many bytes per character wanted is enough."""


def media_type(content_type: str | None) -> str:
    """The bare, lowercase media type of `content_type` (`""` when unknown)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def charset(content_type: str | None) -> str | None:
    """The `charset` parameter of `content_type`, if any (and a codec Python knows)."""
    for param in (content_type or "").split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            value = value.strip().strip('"').lower()
            try:
                return codecs.lookup(value).name
            except LookupError:
                return None
    return None


def is_image(content_type: str | None) -> bool:
    """Whether the object is an image (of any type)."""
    return media_type(content_type).startswith("image/")


def is_plain_text(content_type: str | None) -> bool:
    """Whether the object's bytes are text to give the model as they are (plain text,
    Markdown, CSV, JSON, XML, source code…); other documents go through the text pipeline."""
    kind = media_type(content_type)
    if kind in _CONVERTED_TEXT:
        return False
    return (
        kind.startswith("text/")
        or kind in _RAW_TEXT_APPLICATION
        or kind.endswith(("+json", "+xml"))
    )


def decode_prefix(data: bytes, encoding: str, *, complete: bool, errors: str = "strict") -> str:
    """Decode `data` (`errors` as for `bytes.decode`); when it is only the start of the
    object (`complete` false), a character cut at its end is dropped rather than refused.

    Raises:
        UnicodeDecodeError: `data` is not text in `encoding` (with `errors` `strict`).
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors=errors)
    return decoder.decode(data, final=complete)


def labelled(key: str, text: str, max_chars: int, *, cut: bool) -> str:
    """`text` under a header line naming object `key`, cut to `max_chars` characters with a
    marker saying so (`cut`: the text was already cut before reaching here)."""
    if len(text) > max_chars:
        text, cut = text[:max_chars], True
    marker = f"\n[truncated: only the first {len(text)} characters are shown]" if cut else ""
    return f"[object {_one_line(key)}]\n{text}{marker}"


def _one_line(key: str) -> str:
    return "".join(c if c.isprintable() else "\ufffd" for c in key)
