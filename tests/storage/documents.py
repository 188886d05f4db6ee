"""Real documents made by the tests: PDFs with text (built byte by byte, with a correct
cross-reference table), and images written by Pillow."""

from __future__ import annotations

import io

from PIL import Image


def _pdf_string(text: str) -> bytes:
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return b"(" + escaped.encode("latin-1") + b")"


def pdf_with_text(pages: list[str], *, title: str | None = None) -> bytes:
    """A PDF of one page per text (Helvetica, one line each), with `title` in its info."""
    font = 3
    first_page = 4
    kids = [first_page + 2 * n for n in range(len(pages))]
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids ["
        + b" ".join(b"%d 0 R" % kid for kid in kids)
        + b"] /Count %d >>" % len(pages),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for number, text in enumerate(pages):
        content = b"BT /F1 18 Tf 72 720 Td " + _pdf_string(text) + b" Tj ET"
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
            b" /Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>"
            % (font, kids[number] + 1)
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    info = None
    if title is not None:
        objects.append(b"<< /Title " + _pdf_string(title) + b" >>")
        info = len(objects)
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: list[int] = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    trailer = b"<< /Size %d /Root 1 0 R" % (len(objects) + 1)
    if info is not None:
        trailer += b" /Info %d 0 R" % info
    out.write(b"trailer\n" + trailer + b" >>\nstartxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


def image_bytes(
    width: int, height: int, image_format: str = "PNG", mode: str = "RGB", color: object = "red"
) -> bytes:
    """An image of one colour, encoded by Pillow."""
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, image_format)  # pyright: ignore[reportArgumentType]
    return buffer.getvalue()


def decoded_image(data: bytes) -> Image.Image:
    """An encoded image, opened (and loaded) by Pillow."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
