"""What the local backend accepts (keys, page tokens) and how its failures read: the
shared taxonomy, naming the key and never a path of this machine."""

from __future__ import annotations

import base64
import binascii
import errno

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.keys import KeyRefused, normalise_key

META_DIR = ".ferryman-meta"
TMP_DIR = ".ferryman-tmp"
RESERVED = frozenset({META_DIR, TMP_DIR})
"""Names at the root that are not objects: keys starting with them are refused."""
_RETRYABLE_ERRNOS = frozenset(
    {errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EBUSY, errno.EINTR}
)


def key_segments(key: str, backend: str) -> list[str]:
    """The key's segments, checked again here (defence in depth: the worker already did).

    Raises:
        FerrymanError: `invalid_request`: the key is refused, or names a reserved folder.
    """
    try:
        checked = normalise_key(key)
    except KeyRefused as exc:
        raise FerrymanError(ErrorCode.INVALID_REQUEST, str(exc), upstream=backend) from None
    segments = checked.split("/")
    if segments[0] in RESERVED:
        raise FerrymanError(
            ErrorCode.INVALID_REQUEST,
            f"the key {key[:100]!r} starts with {segments[0]}/, a folder the local backend"
            " keeps for itself",
            upstream=backend,
        )
    return segments


def os_failure(exc: OSError, key: str, *, writing: bool, backend: str) -> FerrymanError:
    """The taxonomy's error for an OS error met on `key` (never a path of this machine)."""
    shown = repr(key[:100])
    name = errno.errorcode.get(exc.errno or 0, "an OS error")
    verb = "write" if writing else "read"
    code, message, retryable = ErrorCode.UNAVAILABLE, f"cannot {verb} {shown} ({name})", False
    match exc.errno:
        case errno.ENOENT | errno.ENOTDIR | errno.ENXIO if not writing:
            code, message = ErrorCode.NOT_FOUND, f"no object {shown}"
        case errno.ENOTDIR | errno.EISDIR | errno.EEXIST | errno.ENOTEMPTY:
            code = ErrorCode.CONFLICT
            message = (
                f"{shown} collides with an object or a folder of the same name ({name}): the"
                " local backend cannot keep both `a` and `a/…`"
            )
        case errno.ELOOP:
            code = ErrorCode.PERMISSION_DENIED
            message = f"{shown} is or passes through a symbolic link, which is never followed"
        case errno.EACCES | errno.EPERM | errno.EROFS:
            code = ErrorCode.PERMISSION_DENIED
            message = f"the local backend may not {verb} {shown} ({name})"
        case errno.ENOSPC | errno.EDQUOT:
            message, retryable = f"no space left to write {shown} ({name})", True
        case errno.EFBIG:
            code, message = ErrorCode.TOO_LARGE, f"{shown} is too large for the local disk"
        case errno.ENAMETOOLONG:
            code = ErrorCode.INVALID_REQUEST
            message = f"a segment of {shown} is too long for the local filesystem"
        case errno.ENOENT:  # writing: a folder vanished under a concurrent delete
            retryable = True
        case _:
            retryable = exc.errno in _RETRYABLE_ERRNOS
    return FerrymanError(code, message, retryable=retryable, upstream=backend)


def encode_token(key: str) -> str:
    """A continuation token: the last key of a page."""
    return base64.urlsafe_b64encode(key.encode()).decode()


def decode_token(token: str, backend: str) -> str:
    """The key a token continues after.

    Raises:
        FerrymanError: `invalid_request`: not a token of this backend.
    """
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode()
    except (binascii.Error, ValueError):
        raise FerrymanError(
            ErrorCode.INVALID_REQUEST,
            "the page token is not one this backend gave",
            upstream=backend,
        ) from None


def valid_segment(name: str) -> bool:
    """Whether a name found on disk is a segment a key may have (others are not listed)."""
    try:
        return normalise_key(name) == name
    except KeyRefused:
        return False
