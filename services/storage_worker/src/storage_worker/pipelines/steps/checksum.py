"""The `checksum` step: SHA-256 and CRC32C of the source (computed as it was read)."""

from __future__ import annotations

from pathlib import Path

from storage_worker.pipelines.config import ChecksumStep
from storage_worker.pipelines.steps.base import Source, StepResult


def run(config: ChecksumStep, source: Source, workdir: Path) -> StepResult:
    """Facts `sha256` and `crc32c` (lowercase hex)."""
    return StepResult(facts={"sha256": source.sha256, "crc32c": source.crc32c})
