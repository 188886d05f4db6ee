"""The `metadata` step: an image's width, height and format (from its header, nothing
decoded), a PDF's page count and title; other content has no facts of this step."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError
from pypdf import PdfReader
from pypdf.errors import PyPdfError

from ferryman.contracts import ErrorCode, FerrymanError
from storage_worker.pipelines.config import MetadataStep
from storage_worker.pipelines.steps.base import Source, StepResult, too_large


def run(config: MetadataStep, source: Source, workdir: Path) -> StepResult:
    """Facts `width`, `height`, `format` (images) or `pages`, `title` (PDF).

    Raises:
        FerrymanError: `invalid_request` (a damaged PDF or image), `too_large` (a PDF over
            `max_bytes`).
    """
    name = config.step_name
    detected = source.detected()
    if detected == "application/pdf":
        return StepResult(facts=_pdf_facts(source, config.max_bytes, name))
    if detected.startswith("image/"):
        return StepResult(facts=_image_facts(source, name))
    return StepResult()


def _image_facts(source: Source, name: str) -> dict[str, str]:
    try:
        with Image.open(source.path) as image:
            return {
                "width": str(image.width),
                "height": str(image.height),
                "format": (image.format or "").lower(),
            }
    except UnidentifiedImageError:
        return {}
    except (OSError, SyntaxError, ValueError) as exc:
        raise FerrymanError(
            ErrorCode.INVALID_REQUEST,
            f"{name}: the image cannot be read ({type(exc).__name__})",
            retryable=False,
        ) from None


def _pdf_facts(source: Source, limit: int, name: str) -> dict[str, str]:
    if source.size > limit:
        raise too_large(name, source.size, limit)
    try:
        with PdfReader(source.path) as reader:
            if reader.is_encrypted and not reader.decrypt(""):
                return {"encrypted": "true"}
            facts = {"pages": str(len(reader.pages))}
            title = reader.metadata.title if reader.metadata is not None else None
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        raise FerrymanError(
            ErrorCode.INVALID_REQUEST,
            f"{name}: the PDF cannot be read ({type(exc).__name__})",
            retryable=False,
        ) from None
    if title:
        facts["title"] = str(title)[:1024]
    return facts
