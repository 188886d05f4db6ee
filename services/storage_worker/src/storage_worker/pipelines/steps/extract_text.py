"""The `extract_text` step: the text of a PDF (pypdf), HTML (Beautiful Soup), Markdown
(markdown-it-py, then as HTML) or plain text in any encoding (charset-normalizer), as a
derived `text/plain; charset=utf-8` object."""

from __future__ import annotations

from pathlib import Path

from pypdf import PdfReader
from pypdf.errors import PyPdfError

from ferryman.contracts import ErrorCode, FerrymanError
from storage_worker.content_types import OCTET_STREAM
from storage_worker.pipelines.config import ExtractTextStep
from storage_worker.pipelines.steps.base import Output, Source, StepResult, too_large, unsupported
from storage_worker.pipelines.steps.text_formats import decoded, html_text, markdown_text

TEXT_TYPE = "text/plain; charset=utf-8"
_READS = "PDF, HTML, Markdown and plain text"
_HTML = ("text/html", "application/xhtml+xml")
_MARKDOWN = ("text/markdown", "text/x-markdown")
_MARKDOWN_SUFFIXES = (".md", ".markdown")
_HTML_SUFFIXES = (".html", ".htm", ".xhtml")
_TEXTUAL = ("application/json", "application/xml", "application/yaml", "application/x-ndjson")


def run(config: ExtractTextStep, source: Source, workdir: Path) -> StepResult:
    """The text, as an output; facts `characters`, and `pages` (PDF) or `encoding` (text).

    Raises:
        FerrymanError: `invalid_request` for a source it cannot read (an image, a damaged or
            encrypted PDF, bytes that are no text); `too_large` over `max_bytes`.
    """
    name = config.step_name
    detected = source.detected()
    target = workdir / f"{name}.txt"
    facts: dict[str, str]
    if detected == "application/pdf":
        facts = _pdf_text(source, target, config.max_bytes, name)
    else:
        declared = (source.content_type or "").split(";", 1)[0].strip().lower()
        suffix = Path(source.key).suffix.lower()
        if not (detected.startswith("text/") or detected in _TEXTUAL or detected == OCTET_STREAM):
            raise unsupported(name, detected, _READS)
        data = source.read_at_most(config.max_bytes, name)
        if detected in _HTML or declared in _HTML or suffix in _HTML_SUFFIXES:
            text, facts = html_text(data), {}
        else:
            found = decoded(data, source.content_type)
            if found is None:
                raise unsupported(name, detected, _READS)
            text, encoding = found
            facts = {"encoding": encoding}
            if declared in _MARKDOWN or suffix in _MARKDOWN_SUFFIXES:
                text = markdown_text(text)
        target.write_text(text, encoding="utf-8")
        facts["characters"] = str(len(text))
    return StepResult(facts=facts, output=Output(target, TEXT_TYPE, "txt"))


def _pdf_text(source: Source, target: Path, limit: int, name: str) -> dict[str, str]:
    """Page by page into `target` (pages apart by an empty line)."""
    if source.size > limit:
        raise too_large(name, source.size, limit)
    characters = 0
    try:
        with PdfReader(source.path) as reader:
            if reader.is_encrypted and not reader.decrypt(""):
                raise FerrymanError(
                    ErrorCode.INVALID_REQUEST,
                    f"{name}: the PDF is encrypted with a password",
                    retryable=False,
                )
            with target.open("w", encoding="utf-8") as out:
                for number, page in enumerate(reader.pages):
                    text = page.extract_text().strip()
                    if number:
                        out.write("\n\n")
                    out.write(text)
                    characters += len(text) + (2 if number else 0)
            pages = len(reader.pages)
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        raise FerrymanError(
            ErrorCode.INVALID_REQUEST,
            f"{name}: the PDF cannot be read ({type(exc).__name__})",
            retryable=False,
        ) from None
    return {"pages": str(pages), "characters": str(characters)}
