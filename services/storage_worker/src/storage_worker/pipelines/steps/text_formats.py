"""Text out of HTML, Markdown and plain-text bytes (in memory: callers bound the size)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import charset_normalizer
from bs4 import UnicodeDammit
from markdown_it import MarkdownIt

_HIDDEN = frozenset({"script", "style", "noscript", "template", "svg", "meta", "link"})
_BLOCKS = frozenset(
    {
        *("address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "fieldset"),
        *("figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6"),
        *("header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tr"),
        *("title", "ul"),
    }
)
_VOID = frozenset({"meta", "link"})
_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_CHARSET = re.compile(r"charset\s*=\s*\"?([A-Za-z0-9_.:\-]+)", re.IGNORECASE)


def html_text(html: bytes | str) -> str:
    """The visible text of an HTML document, a line per block (the encoding of bytes is
    found from the document's declaration or its bytes)."""
    if isinstance(html, bytes):
        html = UnicodeDammit(html, is_html=True).unicode_markup or ""
    # The standard library's event parser, in one pass: building a BeautifulSoup tree of a
    # flat page (many siblings) takes time quadratic in its size.
    collector = _VisibleText()
    collector.feed(html)
    collector.close()
    return tidy("".join(collector.pieces))


class _VisibleText(HTMLParser):
    """Collects the text outside hidden elements, with a line break around each block."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN and tag not in _VOID:
            self._hidden += 1
        elif tag == "br" or tag in _BLOCKS:
            self.pieces.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN and tag not in _VOID:
            self._hidden = max(0, self._hidden - 1)
        elif tag in _BLOCKS:
            self.pieces.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.pieces.append(data)


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
