"""How the Azure Blob backend reaches one container, and the SDK client options that follow
(transfer sizes, timeouts, retries, the pinned API version)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_BLOCKS = 50_000
"""Azure's most blocks in one block blob."""
MAX_BLOCK_SIZE = 4000 * 1024 * 1024
"""Azure's largest block (and largest single Put Blob is 5000 MiB)."""
_SECRET_PARTS = ("accountkey", "sharedaccesssignature")


@dataclass(frozen=True)
class AzureSettings:
    """How to reach one container. Credentials are values (the worker resolves references):
    a connection string, or an account URL with the account's key."""

    container: str
    account_url: str | None = None
    """`https://<account>.blob.core.windows.net`, or an emulator's
    `http://127.0.0.1:10000/devstoreaccount1`."""
    connection_string: str | None = field(default=None, repr=False)
    account_name: str | None = None
    """None: taken from the account URL (or the connection string)."""
    account_key: str | None = field(default=None, repr=False)
    api_version: str | None = None
    """The `x-ms-version` sent (None: the SDK's newest). Pin it for an emulator or a stack
    that lags behind, e.g. `2025-11-05` for Azurite 3.35."""
    block_size: int = 4 * 1024 * 1024
    """Bodies up to this size are one Put Blob; larger ones are staged in blocks of this size
    and committed as a block list (50,000 blocks at most: 195 GiB with the default). A Put
    Blob's bytes are copied by the SDK, about three times over while it runs: keep it small."""
    max_blocks_in_flight: int = 4
    """A put holds at most this many blocks in memory (4 × 4 MiB by default)."""
    download_size: int = 4 * 1024 * 1024
    """Bytes per ranged GET of a download (one range is in memory at a time)."""
    chunk_size: int = 256 * 1024
    """Bytes per chunk of a streamed get."""
    copy_timeout: float = 600.0
    """Seconds to wait for a server-side copy Azure reports as pending."""
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_attempts: int = 3
    """Attempts per call by the SDK's retry policy (1: no retries)."""

    def __post_init__(self) -> None:
        if (self.connection_string is None) == (self.account_url is None):
            raise ValueError("give either a connection string or an account URL")
        if self.account_url is not None and not self.account_key:
            raise ValueError("an account URL needs the account key")
        if not 1 <= self.block_size <= MAX_BLOCK_SIZE:
            raise ValueError(f"Azure blocks hold 1 to {MAX_BLOCK_SIZE} bytes")
        if min(self.max_blocks_in_flight, self.max_attempts) < 1:
            raise ValueError("max_blocks_in_flight and max_attempts must be at least 1")
        if min(self.download_size, self.chunk_size) < 1:
            raise ValueError("download_size and chunk_size must be at least 1")

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of the SDK's client constructors (transfer sizes are client
        options: passed to a call, the SDK hands them to aiohttp, which refuses them)."""
        options: dict[str, Any] = {
            "max_single_get_size": self.download_size,
            "max_chunk_get_size": self.download_size,
            "max_single_put_size": self.block_size,
            "max_block_size": self.block_size,
            "connection_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "retry_total": self.max_attempts - 1,
        }
        if self.api_version:
            options["api_version"] = self.api_version
        return options

    def secrets(self) -> tuple[str, ...]:
        """The values no message may show: the key, the connection string and the secrets in
        it (its `AccountKey` and `SharedAccessSignature`)."""
        found = [self.account_key, self.connection_string]
        for part in (self.connection_string or "").split(";"):
            name, _, value = part.partition("=")
            if name.strip().lower() in _SECRET_PARTS:
                found.append(value.strip())
        return tuple(secret for secret in found if secret)
