"""The checksums every stored object carries: SHA-256 (the backends' own field) and CRC32C
(Castagnoli, google-crc32c), kept as the reserved metadata `ferryman-crc32c` so every
backend stores it the same way, and checked against what a producer announced."""

from __future__ import annotations

import hashlib

import google_crc32c

from ferryman.contracts import ErrorCode, FerrymanError

CRC32C_META = "ferryman-crc32c"
"""Metadata holding an object's CRC32C (8 lowercase hex digits)."""


class Digests:
    """SHA-256 and CRC32C of bytes fed in pieces."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._crc32c = google_crc32c.Checksum()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        """Feed the next bytes."""
        self._sha256.update(chunk)
        self._crc32c.update(chunk)
        self.size += len(chunk)

    @property
    def sha256(self) -> str:
        """Lowercase hex of the bytes so far."""
        return self._sha256.hexdigest()

    @property
    def crc32c(self) -> str:
        """Eight lowercase hex digits of the bytes so far."""
        return self._crc32c.digest().hex()

    def mismatch(self, *, sha256: str | None, crc32c: str | None) -> str | None:
        """Which checksum of the bytes so far differs from the one given (None: none;
        a checksum not given is not checked)."""
        for name, expected, actual in (
            ("SHA-256", sha256, self.sha256),
            ("CRC32C", crc32c, self.crc32c),
        ):
            if expected is not None and expected != actual:
                return f"{name} {actual}, not {expected}"
        return None

    def verify(self, *, sha256: str | None, crc32c: str | None) -> None:
        """Check the bytes so far against what a producer announced (None: not announced).

        Raises:
            FerrymanError: `precondition_failed` naming the checksum that differs.
        """
        differs = self.mismatch(sha256=sha256, crc32c=crc32c)
        if differs is not None:
            raise FerrymanError(
                ErrorCode.PRECONDITION_FAILED,
                f"the content has {differs} announced: nothing stored",
                retryable=False,
            )


def digests_of(data: bytes) -> Digests:
    """The digests of `data`."""
    digests = Digests()
    digests.update(data)
    return digests
