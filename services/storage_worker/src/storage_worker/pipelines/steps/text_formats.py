"""Text out of HTML, Markdown and plain-text bytes (in memory: callers bound the size)."""

from __future__ import annotations

import re

import charset_normalizer
from bs4 import BeautifulSoup
from markdown_it import MarkdownIt

_HIDDEN = ("script", "style", "noscript", "template", "svg", "head > meta", "head > link")
_BLOCKS = (
    "address, article, aside, blockquote, dd, div, dl, dt, fieldset, figcaption, figure,"
    " footer, form, h1, h2, h3, h4, h5, h6, header, hr, li, main, nav, ol, p, pre, section,"
    " table, tr, title, ul"
)
_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_CHARSET = re.compile(r"charset\s*=\s*\"?([A-Za-z0-9_.:\-]+)", re.IGNORECASE)


def html_text(html: bytes | str) -> str:
    """The visible text of an HTML document, a line per block (the encoding of bytes is
    found from the document's declaration or its bytes)."""
    soup = BeautifulSoup(html, "html.parser")
    for hidden in soup.select(", ".join(_HIDDEN)):
        hidden.decompose()
    for line_break in soup.find_all("br"):
        line_break.replace_with("\n")
    for block in soup.select(_BLOCKS):
        block.insert_before("\n")
        block.insert_after("\n")
    return tidy(soup.get_text())


def markdown_text(markdown: str) -> str:
    """The text of a Markdown (CommonMark) document, without its markup."""
    return html_text(MarkdownIt("commonmark").render(markdown))


def decoded(data: bytes, declared: str | None) -> tuple[str, str] | None:
    """The text of `data` and its encoding: the declared charset if it decodes the bytes,
    else UTF-8 if it does, else what charset-normalizer finds (None: not text)."""
    charset = _declared_charset(declared)
    for encoding in (charset, "utf-8"):
        if encoding is None:
            continue
        try:
            return data.decode(encoding).removeprefix("\ufeff"), encoding
        except (UnicodeDecodeError, LookupError):
            continue
    best = charset_normalizer.from_bytes(data).best()
    if best is None:
        return None
    return str(best), best.encoding


def tidy(text: str) -> str:
    """Lines without runs of spaces or surrounding blanks; at most one empty line in a row."""
    lines = (_SPACES.sub(" ", line).strip() for line in text.splitlines())
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _declared_charset(content_type: str | None) -> str | None:
    if not content_type:
        return None
    found = _CHARSET.search(content_type)
    return found.group(1) if found else None
