"""What every step gets and gives: the source spooled to a local file (read by the step in
a worker thread, never on the event loop), and its facts and output file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ferryman.contracts import ErrorCode, FerrymanError
from storage_worker.content_types import detect

SNIFF_BYTES = 8192


@dataclass(frozen=True)
class Source:
    """The object a pipeline runs on, as a local file."""

    path: Path
    size: int
    key: str
    """The tenant's key."""
    content_type: str | None
    """As stored (declared at the put, checked against the bytes then)."""
    sha256: str
    crc32c: str

    def head(self) -> bytes:
        """The first bytes (enough to detect the content type)."""
        with self.path.open("rb") as file:
            return file.read(SNIFF_BYTES)

    def detected(self) -> str:
        """The content type, from the bytes."""
        return detect(self.head())

    def read_at_most(self, limit: int, step: str) -> bytes:
        """The whole source, for a parser that holds it in memory.

        Raises:
            FerrymanError: `too_large` when it is over `limit` bytes.
        """
        if self.size > limit:
            raise too_large(step, self.size, limit)
        return self.path.read_bytes()


@dataclass(frozen=True)
class Output:
    """A step's output, as a local file to store as a derived object."""

    path: Path
    content_type: str
    extension: str


@dataclass(frozen=True)
class StepResult:
    """What a step found out (facts by name, without the step's prefix) and made."""

    facts: dict[str, str] = field(default_factory=dict[str, str])
    output: Output | None = None


def too_large(step: str, size: int, limit: int, unit: str = "bytes") -> FerrymanError:
    """The error for an input over a step's limit."""
    return FerrymanError(
        ErrorCode.TOO_LARGE,
        f"{step} reads at most {limit} {unit}; the source has {size}",
        retryable=False,
    )


def unsupported(step: str, content_type: str, reads: str) -> FerrymanError:
    """The error for a source a step cannot read."""
    return FerrymanError(
        ErrorCode.INVALID_REQUEST,
        f"{step} reads {reads}; the source is {content_type}",
        retryable=False,
    )
