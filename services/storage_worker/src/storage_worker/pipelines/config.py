"""Pipelines as the policy file declares them, and the built-in ones.

```yaml
pipelines:
  documents:
    version: "2"                   # bump it to make earlier outputs stale
    steps:
      - {step: checksum}
      - {step: detect}
      - {step: extract_text}
      - {step: thumbnail, size: 256, format: webp}
      - {step: convert, format: png, name: as_png}
      - {step: metadata}
tenants:
  acme:
    spaces: {local: "acme/"}
    on_upload: [{prefix: "inbox/", pipeline: documents}]
```

A step's name (its `name`, else its kind) is unique in its pipeline: it names the step's
facts (`<name>.<fact>`), its derived object and its progress stage, and a failure names it.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)


def _not_dots(name: str) -> str:
    if name in (".", ".."):
        raise ValueError(f"{name!r} cannot name a pipeline (it names a folder in keys)")
    return name


PipelineName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,64}$"), AfterValidator(_not_dots)
]
"""A pipeline's name (also a folder of its derived objects' keys: never `.` or `..`)."""
STEP_NAME = r"^[A-Za-z0-9_\-]{1,64}$"
MIB = 1024 * 1024
DEFAULT_MAX_BYTES = 64 * MIB
"""What a step that parses its input in memory reads at most, unless configured."""
DEFAULT_MAX_PIXELS = 50_000_000
"""The largest image (width × height) an image step decodes, unless configured."""

ImageFormat = Literal["webp", "png", "jpeg", "gif", "tiff", "bmp"]


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, pattern=STEP_NAME)
    """Names the step in facts, keys, progress and failures (default: its kind)."""

    @property
    def step_name(self) -> str:
        """The step's name in its pipeline."""
        # Each kind declares `step` as its own Literal (the union's discriminator).
        return self.name or str(getattr(self, "step"))  # noqa: B009

    def digest(self) -> str:
        """Identifies the step's configuration (outputs of another one are not reused)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


class ChecksumStep(_Step):
    """SHA-256 and CRC32C of the bytes (facts `sha256`, `crc32c`)."""

    step: Literal["checksum"]


class DetectStep(_Step):
    """The content type, from the bytes (fact `content_type`)."""

    step: Literal["detect"]


class ExtractTextStep(_Step):
    """The text of a PDF, HTML, Markdown or plain-text object, as a derived
    `text/plain; charset=utf-8` object."""

    step: Literal["extract_text"]
    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1)
    """Larger sources fail `too_large` (their parsers hold them in memory)."""


class ThumbnailStep(_Step):
    """A small image of an image: at most `size` pixels wide and high, aspect kept."""

    step: Literal["thumbnail"]
    size: int = Field(default=256, ge=8, le=4096)
    format: ImageFormat = "webp"
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    """Larger images fail `too_large` before they are decoded (decompression bombs)."""
    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1)


class ConvertStep(_Step):
    """The image in another format."""

    step: Literal["convert"]
    format: ImageFormat
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1)


class MetadataStep(_Step):
    """Image width, height and format; PDF page count and title (as facts)."""

    step: Literal["metadata"]
    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1)


Step = Annotated[
    ChecksumStep | DetectStep | ExtractTextStep | ThumbnailStep | ConvertStep | MetadataStep,
    Field(discriminator="step"),
]


class PipelineConfig(BaseModel):
    """Steps run in order on one object."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(default="1", min_length=1, max_length=64)
    """Outputs of another version of the pipeline are stale (run again, not reused)."""
    steps: list[Step] = Field(min_length=1, max_length=32)

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        # `version: 2` in YAML is an int; it means "2".
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        seen: set[str] = set()
        for index, step in enumerate(self.steps):
            if step.step_name in seen:
                raise ValueError(
                    f"steps.{index}: a step named {step.step_name!r} comes earlier: give one"
                    " of them another `name`"
                )
            seen.add(step.step_name)
        return self


class UploadTrigger(BaseModel):
    """Run `pipeline` on every object written (put, copy, move) under `prefix`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: str = Field(max_length=1024)
    """In the tenant's space (`inbox/`; `""`: every object)."""
    pipeline: PipelineName


BUILTIN_PIPELINES: dict[str, PipelineConfig] = {
    "text": PipelineConfig(steps=[DetectStep(step="detect"), ExtractTextStep(step="extract_text")]),
    "thumbnail": PipelineConfig(steps=[ThumbnailStep(step="thumbnail")]),
}
"""Available to every tenant unless the policy defines a pipeline of the same name."""


def pipeline_named(configured: dict[str, PipelineConfig], name: str) -> PipelineConfig | None:
    """The policy's pipeline `name`, else the built-in one, else None."""
    return configured.get(name) or BUILTIN_PIPELINES.get(name)
