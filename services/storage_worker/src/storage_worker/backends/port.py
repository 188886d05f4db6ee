"""The port every storage backend implements (one module per backend), and what it returns.

Keys given to a backend are full keys in its bucket or container (the tenant's prefix
included), already normalised and checked by `storage_worker.keys`. Bodies stream as async
iterators of bytes: no backend holds a whole object in memory. Every failure is a
`FerrymanError` of the shared taxonomy, with `retryable` set at the adapter edge.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

Body = AsyncIterator[bytes]


async def close_body(body: Body) -> None:
    """Close a body that may not have been read to its end."""
    close = getattr(body, "aclose", None)
    if close is not None:
        await close()


@dataclass(frozen=True)
class StoredObject:
    """An object as the backend describes it (full key)."""

    key: str
    size: int
    content_type: str | None = None
    sha256: str | None = None
    """Lowercase hex, when the backend stores or computes it."""
    etag: str | None = None
    version: str | None = None
    last_modified: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict[str, str])
    tags: dict[str, str] = field(default_factory=dict[str, str])


@dataclass(frozen=True)
class Listing:
    """One page of a listing (full keys and prefixes)."""

    objects: list[StoredObject]
    prefixes: list[str] = field(default_factory=list[str])
    next_token: str | None = None


@dataclass(frozen=True)
class Presigned:
    """A URL that reaches one object directly, and the headers its request must send."""

    url: str
    method: Literal["GET", "PUT"]
    expires_at: datetime
    headers: dict[str, str] = field(default_factory=dict[str, str])


class ObjectStore(Protocol):
    """One bucket or container (or, for the local backend, one root folder)."""

    name: str
    """The backend's name in the policy file."""

    async def put(
        self,
        key: str,
        body: Body,
        *,
        content_type: str | None,
        metadata: dict[str, str],
        tags: dict[str, str],
        sha256: str,
        if_absent: bool = False,
    ) -> StoredObject:
        """Store `body` under `key`, whole or not at all (a failed or cancelled upload leaves
        nothing behind). `sha256` is the body's checksum, stored with the object (as
        metadata where the backend has no native field).

        Raises:
            FerrymanError: `conflict` (`if_absent` and the key exists), `too_large`,
                `permission_denied`, `unavailable`, …
        """
        ...

    async def get(self, key: str) -> tuple[StoredObject, Body]:
        """The object and its bytes (streamed; the caller must consume or close the body).

        Raises:
            FerrymanError: `not_found`, …
        """
        ...

    async def head(self, key: str) -> StoredObject:
        """The object's description.

        Raises:
            FerrymanError: `not_found`, …
        """
        ...

    async def list(
        self, prefix: str, *, delimiter: str | None, limit: int, token: str | None
    ) -> Listing:
        """One page of the keys under `prefix`, in key order.

        Raises:
            FerrymanError: `invalid_request` (a bad token), …
        """
        ...

    async def delete(self, key: str) -> bool:
        """Delete the object; whether it existed.

        Raises:
            FerrymanError: …
        """
        ...

    async def copy(self, source: str, key: str, *, if_absent: bool = False) -> StoredObject:
        """Copy `source` to `key` within this store (metadata, tags and checksum kept).

        Raises:
            FerrymanError: `not_found` (no source), `conflict` (`if_absent`), …
        """
        ...

    async def update_metadata(
        self,
        key: str,
        *,
        metadata: dict[str, str] | None,
        tags: dict[str, str] | None,
        content_type: str | None,
    ) -> StoredObject:
        """Replace the metadata and/or tags (None leaves them) and the content type.

        Raises:
            FerrymanError: `not_found`, …
        """
        ...

    async def presign(
        self,
        key: str,
        method: Literal["GET", "PUT"],
        expires_in: int,
        *,
        content_type: str | None = None,
    ) -> Presigned:
        """A URL to GET or PUT the object directly for `expires_in` seconds.

        Raises:
            FerrymanError: `invalid_request` when the backend cannot sign URLs.
        """
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
