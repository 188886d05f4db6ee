"""How the S3 backend writes and reads an object's description: user metadata (names
lowercased, as S3 returns them; values outside printable ASCII RFC 2047-encoded,
`=?UTF-8?B?…?=`, the form S3 itself uses, and decoded on read), the SHA-256 kept as metadata
`ferryman-sha256`, versions, and the page tokens it hands out."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any
from urllib.parse import quote, urlencode

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.port import StoredObject

SHA256_METADATA = "ferryman-sha256"
S3_DEFAULT_CONTENT_TYPE = "binary/octet-stream"
"""What S3 reports for an object stored without a content type (read back as None)."""
_ENCODED_VALUE = re.compile(r"=\?utf-8\?b\?([A-Za-z0-9+/=]*)\?=", re.IGNORECASE)
_TOKEN_MARK = "s3:"


def described(key: str, answer: dict[str, Any], tags: dict[str, str]) -> StoredObject:
    """The object a HeadObject or GetObject answer describes."""
    metadata, sha256 = decoded_metadata(answer.get("Metadata") or {})
    etag = unquoted(answer.get("ETag"))
    content_type = answer.get("ContentType")
    return StoredObject(
        key=key,
        size=int(answer.get("ContentLength", 0)),
        content_type=None if content_type == S3_DEFAULT_CONTENT_TYPE else content_type,
        sha256=sha256 or _native_sha256(answer),
        etag=etag,
        version=version_of(answer.get("VersionId"), etag),
        last_modified=answer.get("LastModified"),
        metadata=metadata,
        tags=tags,
    )


def create_args(answer: dict[str, Any], tags: dict[str, str]) -> dict[str, Any]:
    """The content type of `answer` and `tags`, as a new object's creation arguments."""
    args: dict[str, Any] = {}
    if answer.get("ContentType"):
        args["ContentType"] = answer["ContentType"]
    if tags:
        args["Tagging"] = tagging(tags)
    return args


def tagging(tags: dict[str, str]) -> str:
    """Tags as S3's `Tagging` argument (a query string; spaces as `%20`, not `+`)."""
    return urlencode(tags, quote_via=quote)


def conflict(key: str) -> FerrymanError:
    """The error for `if_absent` on a key that exists."""
    return FerrymanError(ErrorCode.CONFLICT, f"{key[:200]!r} already exists (if_absent)")


def lowercased_names(metadata: dict[str, str]) -> dict[str, str]:
    """`metadata` with lowercased names.

    Raises:
        FerrymanError: `invalid_request` when two names differ only by case.
    """
    names: dict[str, str] = {}
    for name, value in metadata.items():
        if name.lower() in names:
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"metadata names differ only by case ({name!r}); S3 lowercases them",
            )
        names[name.lower()] = value
    return names


def encoded_metadata(metadata: dict[str, str], sha256: str | None) -> dict[str, str]:
    """What to send as S3 user metadata: values S3 can carry, and the SHA-256."""
    encoded = {name: _encoded_value(value) for name, value in metadata.items()}
    if sha256:
        encoded[SHA256_METADATA] = sha256
    return encoded


def _encoded_value(value: str) -> str:
    plain = value.isascii() and value.isprintable() and value == value.strip()
    if plain and not _ENCODED_VALUE.fullmatch(value):
        return value
    return f"=?UTF-8?B?{base64.b64encode(value.encode()).decode()}?="


def decoded_metadata(raw: dict[str, str]) -> tuple[dict[str, str], str | None]:
    """The user's metadata and the SHA-256 from S3's user metadata."""
    metadata: dict[str, str] = {}
    for name, value in raw.items():
        if name == SHA256_METADATA:
            continue
        match = _ENCODED_VALUE.fullmatch(value)
        try:
            metadata[name] = base64.b64decode(match[1]).decode() if match else value
        except (binascii.Error, UnicodeDecodeError):
            metadata[name] = value
    return metadata, raw.get(SHA256_METADATA)


def _native_sha256(answer: dict[str, Any]) -> str | None:
    value = answer.get("ChecksumSHA256")
    if not value or "-" in value or answer.get("ChecksumType") == "COMPOSITE":
        return None  # a checksum of the parts' checksums, not of the bytes
    try:
        return base64.b64decode(value).hex()
    except binascii.Error:
        return None


def our_token(s3_token: str | None, truncated: bool | None) -> str | None:
    """The page token to hand out for S3's (None: the listing ended)."""
    if not truncated or not s3_token:
        return None
    return _TOKEN_MARK + base64.urlsafe_b64encode(s3_token.encode()).decode().rstrip("=")


def s3_token(token: str) -> str:
    """S3's token inside one of ours (anything else is refused here: some S3-compatible
    stores fail with a 500 on a token they did not issue).

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


def unquoted(etag: str | None) -> str | None:
    """The ETag without its quotes."""
    return etag.strip('"') if etag else None


def version_of(version_id: str | None, etag: str | None) -> str | None:
    """The VersionId on a versioned bucket (S3 says `null` elsewhere), else the ETag."""
    return version_id if version_id and version_id != "null" else etag
