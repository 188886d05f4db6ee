"""How the Azure Blob backend writes and reads an object's description.

- Metadata names: Azure takes only C# identifiers (letters, digits, `_`, not starting with a
  digit), the contract allows `-` and a leading digit too. A name Azure takes is sent as it
  is; any other (and any starting with the marker `fm_`) is sent as `fm_` + the name with
  `_` written `_u` and `-` written `_h`, and decoded on read. Azure keeps the names' case
  but compares them without it: names that differ only by case are refused.
- Metadata values: as the S3 backend does (`s3_metadata`): outside printable ASCII, RFC
  2047-encoded; an empty value too (Azure lists it as missing).
- The SHA-256 is user metadata `ferryman-sha256`, the S3 backend's name (sent encoded).
- Tags are blob index tags, within Azure's rules (checked here, for a clear error).
- Page tokens wrap Azure's markers.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.port import StoredObject
from storage_worker.backends.s3_metadata import decoded_metadata, encoded_metadata, unquoted

AZURE_DEFAULT_CONTENT_TYPE = "application/octet-stream"
"""What Azure stores for a blob put without a content type."""
MAX_TAGS = 10
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MARKER = "fm_"
_ESCAPED = re.compile(r"_([uh])", re.IGNORECASE)
_EMPTY_VALUE = "=?UTF-8?B??="
_TAG_TEXT = re.compile(r"[A-Za-z0-9 +\-./:=_]*")
_TOKEN_MARK = "az:"


def azure_name(name: str) -> str:
    """The metadata name sent to Azure for `name`."""
    if _PLAIN_NAME.fullmatch(name) and not name.lower().startswith(_MARKER):
        return name
    return _MARKER + name.replace("_", "_u").replace("-", "_h")


def own_name(sent: str) -> str:
    """The metadata name that `azure_name` sent as `sent`."""
    if not sent.lower().startswith(_MARKER):
        return sent
    return _ESCAPED.sub(lambda m: "_" if m[1].lower() == "u" else "-", sent[len(_MARKER) :])


def azure_metadata(metadata: dict[str, str], sha256: str | None) -> dict[str, str]:
    """What to send as Azure metadata: encoded names and values, and the SHA-256.

    Raises:
        FerrymanError: `invalid_request` when two names differ only by case.
    """
    seen: set[str] = set()
    for name in metadata:
        if name.lower() in seen:
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"metadata names differ only by case ({name!r}); Azure does not tell them apart",
            )
        seen.add(name.lower())
    return {
        azure_name(name): value or _EMPTY_VALUE
        for name, value in encoded_metadata(metadata, sha256).items()
    }


def own_metadata(raw: dict[str, Any] | None) -> tuple[dict[str, str], str | None]:
    """The user's metadata and the SHA-256 from Azure's metadata."""
    named = {own_name(name): value or "" for name, value in (raw or {}).items()}
    return decoded_metadata(named)


def checked_tags(tags: dict[str, str]) -> dict[str, str]:
    """`tags`, once checked against Azure's rules for blob index tags.

    Raises:
        FerrymanError: `invalid_request` naming the rule a tag breaks.
    """
    if len(tags) > MAX_TAGS:
        raise FerrymanError(
            ErrorCode.INVALID_REQUEST, f"Azure keeps at most {MAX_TAGS} tags, not {len(tags)}"
        )
    for name, value in tags.items():
        if not (1 <= len(name) <= 128 and len(value) <= 256):
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"tag {name[:128]!r}: Azure takes names of 1 to 128 characters and values of"
                " up to 256",
            )
        if not (_TAG_TEXT.fullmatch(name) and _TAG_TEXT.fullmatch(value)):
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"tag {name[:128]!r}: Azure takes only letters, digits, spaces and + - . / : = _"
                " in tag names and values",
            )
    return dict(tags)


def described(key: str, props: Any, tags: dict[str, str]) -> StoredObject:
    """The object a `BlobProperties` (from a head, a download or a listing) describes."""
    metadata, sha256 = own_metadata(props.metadata)
    etag = unquoted(props.etag)
    settings = props.content_settings
    return StoredObject(
        key=key,
        size=int(props.size or 0),
        content_type=settings.content_type if settings is not None else None,
        sha256=sha256,
        etag=etag,
        version=props.version_id or etag,
        last_modified=props.last_modified,
        metadata=metadata,
        tags=tags,
    )


def our_token(marker: str | None) -> str | None:
    """The page token to hand out for Azure's continuation marker (None: the end)."""
    if not marker:
        return None
    return _TOKEN_MARK + base64.urlsafe_b64encode(marker.encode()).decode().rstrip("=")


def azure_marker(token: str) -> str:
    """Azure's marker inside one of our tokens (Azurite answers a marker it never gave with
    a page, not an error: anything else is refused here).

    Raises:
        FerrymanError: `invalid_request` for a token this backend did not hand out.
    """
    encoded = token.removeprefix(_TOKEN_MARK)
    try:
        if encoded == token or not encoded.isascii():
            raise ValueError(token)
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise FerrymanError(
            ErrorCode.INVALID_REQUEST, "the page token is not one this listing gave"
        ) from None
