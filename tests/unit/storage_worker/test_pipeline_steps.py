"""Each pipeline step on real documents made by the tests: PDFs, HTML, Markdown, latin-1
text, PNG and JPEG images (and what the steps refuse)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import google_crc32c
import pytest

from ferryman.contracts import ErrorCode, FerrymanError
from storage_worker.pipelines.config import (
    ChecksumStep,
    ConvertStep,
    DetectStep,
    ExtractTextStep,
    MetadataStep,
    ThumbnailStep,
)
from storage_worker.pipelines.steps import STEPS, Source, StepResult
from tests.storage.documents import decoded_image, image_bytes, pdf_with_text

LATIN_1 = (
    "Le café de la gare est fermé. Nous avons mangé une crème brûlée très délicieuse et bu"
    " un thé à la menthe. À bientôt, chère amie!\n"
)


def source_of(
    tmp_path: Path, data: bytes, key: str = "doc", content_type: str | None = None
) -> Source:
    path = tmp_path / "source"
    path.write_bytes(data)
    return Source(
        path=path,
        size=len(data),
        key=key,
        content_type=content_type,
        sha256=hashlib.sha256(data).hexdigest(),
        crc32c=google_crc32c.Checksum(data).digest().hex(),
    )


def run(step: object, source: Source, tmp_path: Path) -> StepResult:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    return STEPS[getattr(step, "step")](step, source, scratch)  # noqa: B009


def output_text(result: StepResult) -> str:
    assert result.output is not None
    assert result.output.content_type == "text/plain; charset=utf-8"
    assert result.output.extension == "txt"
    return result.output.path.read_text(encoding="utf-8")


def test_checksum_gives_sha256_and_crc32c(tmp_path: Path) -> None:
    result = run(ChecksumStep(step="checksum"), source_of(tmp_path, b"123456789"), tmp_path)

    # CRC32C("123456789") is the algorithm's published check value.
    assert result.facts == {
        "sha256": hashlib.sha256(b"123456789").hexdigest(),
        "crc32c": "e3069283",
    }
    assert result.output is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (pdf_with_text(["x"]), "application/pdf"),
        (image_bytes(4, 4, "PNG"), "image/png"),
        (image_bytes(4, 4, "JPEG"), "image/jpeg"),
        (b"plain words\n", "text/plain"),
    ],
)
def test_detect_reads_the_bytes_not_the_declared_type(
    tmp_path: Path, data: bytes, expected: str
) -> None:
    source = source_of(tmp_path, data, content_type="application/octet-stream")

    assert run(DetectStep(step="detect"), source, tmp_path).facts == {"content_type": expected}


def test_extract_text_of_a_pdf_page_by_page(tmp_path: Path) -> None:
    pdf = pdf_with_text(["Hello Ferryman (page one)", "Second page"], title="Report")

    result = run(ExtractTextStep(step="extract_text"), source_of(tmp_path, pdf), tmp_path)

    assert output_text(result) == "Hello Ferryman (page one)\n\nSecond page"
    assert result.facts["pages"] == "2"
    assert result.facts["characters"] == str(len(output_text(result)))


def test_extract_text_of_html_drops_markup_scripts_and_styles(tmp_path: Path) -> None:
    html = (
        b"<!DOCTYPE html><html><head><title>Menu</title><style>p {color: red}</style></head>"
        b"<body><h1>Caf&eacute; du Port</h1><p>Open <b>every</b> day</p>"
        b"<script>alert('no')</script><ul><li>Tea</li><li>Cake</li></ul></body></html>"
    )

    text = output_text(
        run(ExtractTextStep(step="extract_text"), source_of(tmp_path, html), tmp_path)
    )

    assert text.splitlines() == [
        "Menu",
        "",
        "Café du Port",
        "",
        "Open every day",
        "",
        "Tea",
        "",
        "Cake",
    ]


def test_extract_text_of_markdown_leaves_its_markup_out(tmp_path: Path) -> None:
    markdown = (
        b"# Release notes\n\nThe *worker* now reads [links](https://example.com).\n\n- one\n- two\n"
    )
    source = source_of(tmp_path, markdown, key="notes/release.md", content_type="text/markdown")

    text = output_text(run(ExtractTextStep(step="extract_text"), source, tmp_path))

    assert "Release notes" in text
    assert "The worker now reads links." in text
    assert not any(mark in text for mark in ("#", "*", "](", "https://example.com"))
    assert text.splitlines()[-3:] == ["one", "", "two"]


def test_extract_text_finds_the_encoding_of_latin_1_text(tmp_path: Path) -> None:
    source = source_of(tmp_path, LATIN_1.encode("latin-1"), key="lettre.txt")

    result = run(ExtractTextStep(step="extract_text"), source, tmp_path)

    assert output_text(result) == LATIN_1
    assert result.facts["encoding"] in ("cp1252", "latin_1", "iso8859_15")


def test_extract_text_uses_a_declared_charset(tmp_path: Path) -> None:
    data = "Grüße aus München".encode("iso-8859-1")
    source = source_of(tmp_path, data, content_type="text/plain; charset=iso-8859-1")

    result = run(ExtractTextStep(step="extract_text"), source, tmp_path)

    assert output_text(result) == "Grüße aus München"
    assert result.facts["encoding"] == "iso-8859-1"


def test_extract_text_refuses_an_image(tmp_path: Path) -> None:
    with pytest.raises(FerrymanError) as refused:
        run(ExtractTextStep(step="extract_text"), source_of(tmp_path, image_bytes(8, 8)), tmp_path)

    assert refused.value.code == ErrorCode.INVALID_REQUEST
    assert "image/png" in refused.value.message
    assert refused.value.retryable is False


def test_extract_text_refuses_a_damaged_pdf(tmp_path: Path) -> None:
    damaged = b"%PDF-1.4\n" + b"\x00garbage" * 50

    with pytest.raises(FerrymanError) as refused:
        run(ExtractTextStep(step="extract_text"), source_of(tmp_path, damaged), tmp_path)

    assert refused.value.code == ErrorCode.INVALID_REQUEST
    assert "PDF" in refused.value.message


def test_extract_text_refuses_a_source_over_its_limit(tmp_path: Path) -> None:
    step = ExtractTextStep(step="extract_text", max_bytes=10)

    with pytest.raises(FerrymanError) as refused:
        run(step, source_of(tmp_path, b"more than ten bytes of text"), tmp_path)

    assert refused.value.code == ErrorCode.TOO_LARGE


@pytest.mark.parametrize("source_format", ["PNG", "JPEG"])
def test_thumbnail_fits_the_size_and_keeps_the_aspect(tmp_path: Path, source_format: str) -> None:
    source = source_of(tmp_path, image_bytes(1000, 500, source_format))

    result = run(ThumbnailStep(step="thumbnail", size=256, format="webp"), source, tmp_path)

    assert result.output is not None
    assert result.output.content_type == "image/webp"
    thumbnail = decoded_image(result.output.path.read_bytes())
    assert thumbnail.format == "WEBP"
    assert thumbnail.size == (256, 128)
    assert result.facts == {"width": "256", "height": "128"}


def test_convert_flattens_transparency_for_jpeg(tmp_path: Path) -> None:
    png = image_bytes(40, 30, "PNG", mode="RGBA", color=(0, 0, 255, 0))

    result = run(ConvertStep(step="convert", format="jpeg"), source_of(tmp_path, png), tmp_path)

    assert result.output is not None
    assert (result.output.content_type, result.output.extension) == ("image/jpeg", "jpg")
    converted = decoded_image(result.output.path.read_bytes())
    assert (converted.format, converted.size, converted.mode) == ("JPEG", (40, 30), "RGB")
    red, green, blue = converted.getpixel((20, 15))  # pyright: ignore[reportGeneralTypeIssues]
    assert min(red, green, blue) > 240  # the transparent pixels became white


def test_convert_to_png(tmp_path: Path) -> None:
    jpeg = image_bytes(64, 48, "JPEG")

    result = run(ConvertStep(step="convert", format="png"), source_of(tmp_path, jpeg), tmp_path)

    assert result.output is not None
    assert decoded_image(result.output.path.read_bytes()).format == "PNG"


def test_an_image_over_the_pixel_limit_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    # 64 million pixels that compress to a few kilobytes: a decompression bomb.
    bomb = image_bytes(8000, 8000, "PNG", mode="1", color=0)
    assert len(bomb) < 100_000

    for step in (ThumbnailStep(step="thumbnail"), ConvertStep(step="convert", format="png")):
        with pytest.raises(FerrymanError) as refused:
            run(step, source_of(tmp_path, bomb), tmp_path)
        assert refused.value.code == ErrorCode.TOO_LARGE
        assert "pixels" in refused.value.message


def test_image_steps_refuse_what_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(FerrymanError) as refused:
        run(ThumbnailStep(step="thumbnail"), source_of(tmp_path, pdf_with_text(["x"])), tmp_path)

    assert refused.value.code == ErrorCode.INVALID_REQUEST
    assert "application/pdf" in refused.value.message


def test_metadata_of_an_image(tmp_path: Path) -> None:
    source = source_of(tmp_path, image_bytes(320, 200, "JPEG"))

    result = run(MetadataStep(step="metadata"), source, tmp_path)

    assert result.facts == {"width": "320", "height": "200", "format": "jpeg"}
    assert result.output is None


def test_metadata_of_a_pdf(tmp_path: Path) -> None:
    pdf = pdf_with_text(["one", "two", "three"], title="Quarterly (Q3) report")

    result = run(MetadataStep(step="metadata"), source_of(tmp_path, pdf), tmp_path)

    assert result.facts == {"pages": "3", "title": "Quarterly (Q3) report"}


def test_metadata_of_other_content_is_empty(tmp_path: Path) -> None:
    result = run(MetadataStep(step="metadata"), source_of(tmp_path, b"just text\n"), tmp_path)

    assert result.facts == {}
