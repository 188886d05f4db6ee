"""The `detect` step: the content type from the bytes (never from the request)."""

from __future__ import annotations

from pathlib import Path

from storage_worker.pipelines.config import DetectStep
from storage_worker.pipelines.steps.base import Source, StepResult


def run(config: DetectStep, source: Source, workdir: Path) -> StepResult:
    """Fact `content_type`."""
    return StepResult(facts={"content_type": source.detected()})
