"""How the GCS backend reaches one bucket: the endpoint, the service account (a parsed
key, never a path or a reference: the worker resolves those), chunk sizes and timeouts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RESUMABLE_UNIT = 256 * 1024
"""GCS accepts resumable chunks (but the last) only in multiples of 256 KiB."""
GOOGLE_API_ROOT = "https://storage.googleapis.com"


@dataclass(frozen=True)
class GcsSettings:
    """How to reach one bucket.

    With `endpoint_url` (an emulator) requests carry no credentials; without it they carry
    a token of `service_account` or, when None, of the default credentials
    (`GOOGLE_APPLICATION_CREDENTIALS`, the metadata server). Only a service account can
    sign URLs.
    """

    bucket: str
    endpoint_url: str | None = None
    """None: Google. Else an emulator (gcp-storage-emulator, fake-gcs-server)."""
    service_account: dict[str, Any] | None = field(default=None, repr=False)
    """A service-account key (the parsed JSON key file)."""
    chunk_size: int = 8 * 1024 * 1024
    """Bodies up to this size are one upload request; larger ones go as a resumable upload
    in chunks of this size (one chunk in memory at a time)."""
    read_chunk_size: int = 256 * 1024
    """Bytes per chunk of a streamed get."""
    request_timeout: float = 60.0
    """Seconds for a request without a body to stream (head, list, patch, copy, delete)."""
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    """Seconds a streamed upload or download may stall."""

    def __post_init__(self) -> None:
        if self.chunk_size < RESUMABLE_UNIT or self.chunk_size % RESUMABLE_UNIT:
            raise ValueError(f"GCS chunks are a positive multiple of {RESUMABLE_UNIT} bytes")
        if self.read_chunk_size < 1:
            raise ValueError("read_chunk_size must be at least 1")

    @property
    def api_root(self) -> str:
        """Where requests go (an emulator's URL or Google's)."""
        return (self.endpoint_url or GOOGLE_API_ROOT).rstrip("/")

    @property
    def anonymous(self) -> bool:
        """Whether requests go without credentials (to an emulator)."""
        return self.endpoint_url is not None
