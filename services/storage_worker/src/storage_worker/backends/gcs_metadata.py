"""How the GCS backend writes and reads an object's description: GCS object resources
(JSON) to `StoredObject`, the SHA-256 kept as custom metadata `ferryman-sha256` (as the S3
backend does), tags as custom metadata `ferryman-tag-<name>` (GCS has no tags; both hidden
from the user's metadata), versions (the generation), and the page tokens it hands out."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.port import StoredObject

SHA256_METADATA = "ferryman-sha256"
TAG_PREFIX = "ferryman-tag-"
_TOKEN_MARK = "gcs:"


def described(resource: dict[str, Any]) -> StoredObject:
    """The object a GCS object resource describes.

    Raises:
        ValueError: the resource lacks a name or has an unreadable size or time.
    """
    raw: Any = resource.get("metadata") or {}
    metadata: dict[str, str] = {}
    tags: dict[str, str] = {}
    for name, value in raw.items() if isinstance(raw, dict) else ():
        if value is None:  # an emulator keeps a removed entry as null
            continue
        if name.startswith(TAG_PREFIX):
            tags[name.removeprefix(TAG_PREFIX)] = str(value)
        elif name != SHA256_METADATA:
            metadata[str(name)] = str(value)
    updated = resource.get("updated") or resource.get("timeCreated")
    sha256 = raw.get(SHA256_METADATA) if isinstance(raw, dict) else None
    return StoredObject(
        key=str(resource["name"]),
        size=int(resource.get("size") or 0),
        content_type=resource.get("contentType") or None,
        sha256=str(sha256) if sha256 else None,
        etag=resource.get("etag") or None,
        version=str(resource["generation"]) if resource.get("generation") else None,
        last_modified=datetime.fromisoformat(updated) if updated else None,
        metadata=metadata,
        tags=tags,
    )


def custom_metadata(
    metadata: dict[str, str], tags: dict[str, str], sha256: str | None
) -> dict[str, str]:
    """What to store as GCS custom metadata: the user's, the tags and the SHA-256.

    Raises:
        FerrymanError: `invalid_request` for a metadata name this backend keeps for itself.
    """
    for name in metadata:
        if name.startswith(TAG_PREFIX) or name == SHA256_METADATA:
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"metadata name {name[:100]!r} is reserved by the GCS backend"
                f" ({SHA256_METADATA}, {TAG_PREFIX}*)",
            )
    stored = dict(metadata) | {TAG_PREFIX + name: value for name, value in tags.items()}
    if sha256:
        stored[SHA256_METADATA] = sha256
    return stored


def replacing(current: dict[str, Any] | None, wanted: dict[str, str]) -> dict[str, str | None]:
    """A metadata patch turning `current` (a resource's custom metadata) into `wanted`:
    GCS merges a patch's metadata, so names to drop are sent as null."""
    dropped: dict[str, str | None] = {name: None for name in current or {} if name not in wanted}
    return dropped | dict(wanted)


def conflict(key: str) -> FerrymanError:
    """The error for `if_absent` on a key that exists."""
    return FerrymanError(ErrorCode.CONFLICT, f"{key[:200]!r} already exists (if_absent)")


def our_token(gcs_token: str | None) -> str | None:
    """The page token to hand out for GCS's (None: the listing ended)."""
    if not gcs_token:
        return None
    return _TOKEN_MARK + base64.urlsafe_b64encode(gcs_token.encode()).decode().rstrip("=")


def gcs_token(token: str) -> str:
    """GCS's token inside one of ours.

    Raises:
        FerrymanError: `invalid_request` for a token this backend did not hand out.
    """
    encoded = token.removeprefix(_TOKEN_MARK)
    try:
        if encoded == token or not encoded or not encoded.isascii():
            raise ValueError(token)
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise FerrymanError(
            ErrorCode.INVALID_REQUEST, "the page token is not one this listing gave"
        ) from None
