"""The `thumbnail` and `convert` steps (Pillow): a derived image, decoded only after its
dimensions were checked against the step's pixel limit (decompression bombs fail
`too_large` before any pixel is decoded)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ferryman.contracts import ErrorCode, FerrymanError
from storage_worker.pipelines.config import ConvertStep, ImageFormat, ThumbnailStep
from storage_worker.pipelines.steps.base import Output, Source, StepResult, too_large, unsupported

_PILLOW_FORMAT: dict[ImageFormat, str] = {
    "webp": "WEBP",
    "png": "PNG",
    "jpeg": "JPEG",
    "gif": "GIF",
    "tiff": "TIFF",
    "bmp": "BMP",
}
_EXTENSION: dict[ImageFormat, str] = {"jpeg": "jpg"}
_NO_ALPHA: frozenset[ImageFormat] = frozenset({"jpeg", "bmp"})


def thumbnail(config: ThumbnailStep, source: Source, workdir: Path) -> StepResult:
    """An image at most `size` by `size` pixels (aspect kept, EXIF orientation applied); facts
    `width` and `height` of the thumbnail.

    Raises:
        FerrymanError: `invalid_request` (not an image Pillow reads), `too_large`.
    """
    name = config.step_name
    with opened(source, name, config.max_pixels, config.max_bytes) as image:
        image.thumbnail((config.size, config.size))
        upright = ImageOps.exif_transpose(image)
        return _saved(upright, config.format, workdir / name)


def convert(config: ConvertStep, source: Source, workdir: Path) -> StepResult:
    """The image in `format` (its first frame; transparency flattened on white for formats
    without it); facts `width` and `height`.

    Raises:
        FerrymanError: `invalid_request` (not an image Pillow reads), `too_large`.
    """
    name = config.step_name
    with opened(source, name, config.max_pixels, config.max_bytes) as image:
        image.load()
        return _saved(image, config.format, workdir / name)


@contextmanager
def opened(source: Source, step: str, max_pixels: int, max_bytes: int) -> Iterator[Image.Image]:
    """The source as a lazily decoded image whose dimensions are within `max_pixels`.

    Raises:
        FerrymanError: `invalid_request` (not an image Pillow reads, or damaged),
            `too_large` (over `max_bytes` or `max_pixels`, or a decompression bomb).
    """
    if source.size > max_bytes:
        raise too_large(step, source.size, max_bytes)
    try:
        with Image.open(source.path) as image:
            pixels = image.width * image.height
            if pixels > max_pixels:
                raise too_large(step, pixels, max_pixels, unit="pixels")
            yield image
    except UnidentifiedImageError:
        raise unsupported(step, source.detected(), "images") from None
    except Image.DecompressionBombError:
        # Pillow's own guard (MAX_IMAGE_PIXELS), for a `max_pixels` set above it.
        raise FerrymanError(
            ErrorCode.TOO_LARGE,
            f"{step}: the image is too large to decode safely (a decompression bomb?)",
            retryable=False,
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # What Pillow raises for truncated or malformed image data.
        raise FerrymanError(
            ErrorCode.INVALID_REQUEST,
            f"{step}: the image cannot be decoded ({type(exc).__name__})",
            retryable=False,
        ) from None


def _saved(image: Image.Image, image_format: ImageFormat, stem: Path) -> StepResult:
    if image_format in _NO_ALPHA and image.mode not in ("RGB", "L"):
        image = _flattened(image)
    elif image.mode not in ("RGB", "RGBA", "L", "LA", "P", "1"):
        image = image.convert("RGBA")
    extension = _EXTENSION.get(image_format, image_format)
    target = stem.with_suffix(f".{extension}")
    image.save(target, format=_PILLOW_FORMAT[image_format])
    return StepResult(
        facts={"width": str(image.width), "height": str(image.height)},
        output=Output(target, f"image/{image_format}", extension),
    )


def _flattened(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, "white")
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background
