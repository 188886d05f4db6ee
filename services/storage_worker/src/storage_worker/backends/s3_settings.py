"""How the S3 backend reaches one bucket, and the botocore client configuration that
follows (checksum defaults suited to the endpoint, timeouts, retries)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from aiobotocore.config import AioConfig

from storage_worker.backends.s3_transfer import MIN_PART_SIZE

_MAX_COPY = 5 * 1024**3


@dataclass(frozen=True)
class S3Settings:
    """How to reach one bucket. Credentials are values (the worker resolves references);
    None for all three uses botocore's default chain (environment, instance role)."""

    bucket: str
    region: str = "us-east-1"
    endpoint_url: str | None = None
    """None: AWS. Else an S3-compatible endpoint (MinIO, R2, moto)."""
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    checksum_calculation: Literal["when_supported", "when_required"] | None = None
    """botocore's default request checksums and response validation. None: `when_supported`
    on AWS, `when_required` on other endpoints (many reject botocore ≥ 1.36's defaults)."""
    native_checksums: bool = True
    """Send `ChecksumSHA256`; turn off for stores that reject S3's checksum headers."""
    conditional_writes: bool = True
    """Send `If-None-Match: *` for `if_absent`; off: a (racy) HEAD check instead."""
    part_size: int = 8 * 1024 * 1024
    """Bodies up to this size are one PutObject; larger ones go in parts of this size
    (10,000 parts at most: 78 GiB with the default)."""
    max_parts_in_flight: int = 2
    """A put holds at most this many parts in memory (2 × 8 MiB by default)."""
    copy_threshold: int = _MAX_COPY
    """Objects past this size are copied in ranged parts (CopyObject stops at 5 GiB)."""
    copy_part_size: int = 512 * 1024 * 1024
    list_details: bool = True
    """Describe listed objects fully (a HEAD each, `list_concurrency` at a time); off: what
    ListObjectsV2 gives alone (key, size, ETag, time)."""
    list_concurrency: int = 8
    chunk_size: int = 256 * 1024
    """Bytes per chunk of a streamed get."""
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_attempts: int = 3
    """Attempts per S3 call by botocore's standard retry mode (1: no retries)."""
    max_pool_connections: int = 16

    def __post_init__(self) -> None:
        if self.part_size < MIN_PART_SIZE or self.copy_part_size < MIN_PART_SIZE:
            raise ValueError(f"S3 parts must be at least {MIN_PART_SIZE} bytes")
        if self.copy_threshold > _MAX_COPY or self.copy_part_size > _MAX_COPY:
            raise ValueError("S3 copies at most 5 GiB in one request")
        if self.max_parts_in_flight < 1 or self.max_attempts < 1:
            raise ValueError("max_parts_in_flight and max_attempts must be at least 1")

    def client_config(self) -> AioConfig:
        """The client's configuration."""
        calculation = self.checksum_calculation or (
            "when_supported" if self.endpoint_url is None else "when_required"
        )
        return AioConfig(
            region_name=self.region,
            signature_version="s3v4",
            s3={"addressing_style": self.addressing_style},
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_pool_connections=self.max_pool_connections,
            request_checksum_calculation=calculation,
            response_checksum_validation=calculation,
        )
