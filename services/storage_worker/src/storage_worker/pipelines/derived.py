"""Derived objects: where a step's output is stored, and the lineage it carries.

A step's output of the source `reports/q3.pdf` is stored next to it, in the same backend and
tenant space, under `reports/q3.pdf.derived/<pipeline>/<step>.<ext>` (for example
`reports/q3.pdf.derived/text/extract_text.txt`): the same source, pipeline and step always
give the same key, so a new run replaces its earlier output rather than piling up copies,
and a listing of `<key>.derived/` shows everything made from one object.

Lineage is kept as reserved metadata (`ferryman-lineage-*`, hidden from the tenant's own
metadata) and shown as `ObjectInfo.lineage`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ferryman.contracts.storage import Lineage

DERIVED_FOLDER = ".derived"
_PREFIX = "ferryman-lineage-"
SOURCE = f"{_PREFIX}source"
SOURCE_VERSION = f"{_PREFIX}source-version"
SOURCE_SHA256 = f"{_PREFIX}source-sha256"
PIPELINE = f"{_PREFIX}pipeline"
PIPELINE_VERSION = f"{_PREFIX}pipeline-version"
STEP = f"{_PREFIX}step"
STEP_CONFIG = f"{_PREFIX}step-config"


def derived_key(source_key: str, pipeline: str, step: str, extension: str) -> str:
    """The key of `step`'s output in `pipeline` run on `source_key` (tenant keys)."""
    return f"{source_key}{DERIVED_FOLDER}/{pipeline}/{step}.{extension}"


@dataclass(frozen=True)
class Origin:
    """What one derived object was made from, and by what."""

    source_key: str
    source_version: str | None
    """The source's backend version, else its etag."""
    source_sha256: str | None
    pipeline: str
    pipeline_version: str
    step: str
    step_config: str
    """The digest of the step's configuration."""

    def metadata(self) -> dict[str, str]:
        """The reserved metadata that records this origin on the derived object."""
        return {
            SOURCE: self.source_key,
            SOURCE_VERSION: self.source_version or "",
            SOURCE_SHA256: self.source_sha256 or "",
            PIPELINE: self.pipeline,
            PIPELINE_VERSION: self.pipeline_version,
            STEP: self.step,
            STEP_CONFIG: self.step_config,
        }

    def made(self, metadata: Mapping[str, str]) -> bool:
        """Whether an object with `metadata` is this origin's output (current, reusable)."""
        return all(metadata.get(name) == value for name, value in self.metadata().items())


def lineage_of(metadata: Mapping[str, str]) -> Lineage | None:
    """The lineage an object's metadata records (None: not a derived object)."""
    source = metadata.get(SOURCE)
    pipeline = metadata.get(PIPELINE)
    step = metadata.get(STEP)
    if not source or not pipeline or not step:
        return None
    return Lineage(
        source_key=source,
        source_version=metadata.get(SOURCE_VERSION) or None,
        pipeline=pipeline,
        step=step,
        pipeline_version=metadata.get(PIPELINE_VERSION) or None,
    )
