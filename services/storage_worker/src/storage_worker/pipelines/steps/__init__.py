"""The steps by kind: each a function run in a worker thread on the spooled source."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage_worker.pipelines.steps import checksum, detect, extract_text, images, metadata
from storage_worker.pipelines.steps.base import Output, Source, StepResult

StepFunction = Callable[[Any, Source, Path], StepResult]

STEPS: dict[str, StepFunction] = {
    "checksum": checksum.run,
    "detect": detect.run,
    "extract_text": extract_text.run,
    "thumbnail": images.thumbnail,
    "convert": images.convert,
    "metadata": metadata.run,
}
"""Each step kind's function: `(its config, the source, a scratch folder) → result`."""

__all__ = ["STEPS", "Output", "Source", "StepFunction", "StepResult"]


def output_extension(config: Any) -> str | None:
    """The extension of the output a step of `config` makes (None: it makes none)."""
    kind = config.step
    if kind == "extract_text":
        return "txt"
    if kind in ("thumbnail", "convert"):
        return "jpg" if config.format == "jpeg" else str(config.format)
    return None
