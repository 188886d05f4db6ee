"""The storage requests a producer builds, the replies they are answered with, and what the
client checks of a reply (`ferryman.storage_client` uses them; so does `ferryman storage`).

Every builder validates before anything is published: a malformed key, backend, metadata
name or expiry raises `pydantic.ValidationError`, content over the inline limit `ValueError`.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel

from ferryman.contracts.errors import ErrorCode, ErrorInfo
from ferryman.contracts.storage import (
    DEFAULT_INLINE_LIMIT,
    STORAGE_COPY_COMPLETED,
    STORAGE_COPY_REQUESTED,
    STORAGE_DELETE_COMPLETED,
    STORAGE_DELETE_REQUESTED,
    STORAGE_FAILED,
    STORAGE_GET_COMPLETED,
    STORAGE_GET_REQUESTED,
    STORAGE_HEAD_COMPLETED,
    STORAGE_HEAD_REQUESTED,
    STORAGE_LIST_COMPLETED,
    STORAGE_LIST_REQUESTED,
    STORAGE_METADATA_UPDATE_COMPLETED,
    STORAGE_METADATA_UPDATE_REQUESTED,
    STORAGE_PRESIGN_COMPLETED,
    STORAGE_PRESIGN_REQUESTED,
    STORAGE_PROCESS_COMPLETED,
    STORAGE_PROCESS_REQUESTED,
    STORAGE_PROGRESS,
    STORAGE_PUT_COMPLETED,
    STORAGE_PUT_REQUESTED,
    CopyCompleted,
    CopyRequest,
    DeleteCompleted,
    DeleteRequest,
    GetCompleted,
    GetRequest,
    HeadCompleted,
    HeadRequest,
    ListCompleted,
    ListRequest,
    MetadataUpdateCompleted,
    MetadataUpdateRequest,
    PresignCompleted,
    PresignRequest,
    ProcessCompleted,
    ProcessRequest,
    PutCompleted,
    PutRequest,
    StorageFailed,
    StorageProgress,
)
from ferryman.replies import ReplyRegistry, ReplyRole, ReplyType, RunRestarted
from ferryman.request_stream import RequestFailedError

__all__ = [
    "CopyEvent",
    "ProcessEvent",
    "StorageFailedError",
    "StorageIntegrityError",
    "copy_request",
    "inline_content",
    "presign_request",
    "put_request",
    "register_storage",
]

CopyEvent = StorageProgress | RunRestarted | CopyCompleted
"""What `StorageClient.copy_stream` yields (a `RunRestarted` means the request runs again:
progress shown so far belongs to a run given up)."""

ProcessEvent = StorageProgress | RunRestarted | ProcessCompleted
"""What `StorageClient.process_stream` yields (progress by step, then the outcome)."""

StorageFailedError = RequestFailedError
"""Raised when the storage_worker answers `ferryman.storage.failed`; `error` is its
`ErrorInfo` (code in the shared taxonomy, `retryable`). The same class as
`RequestFailedError`."""

_KINDS: tuple[tuple[str, str, type[BaseModel], type[BaseModel]], ...] = (
    (STORAGE_PUT_REQUESTED, STORAGE_PUT_COMPLETED, PutRequest, PutCompleted),
    (STORAGE_GET_REQUESTED, STORAGE_GET_COMPLETED, GetRequest, GetCompleted),
    (STORAGE_HEAD_REQUESTED, STORAGE_HEAD_COMPLETED, HeadRequest, HeadCompleted),
    (STORAGE_LIST_REQUESTED, STORAGE_LIST_COMPLETED, ListRequest, ListCompleted),
    (STORAGE_DELETE_REQUESTED, STORAGE_DELETE_COMPLETED, DeleteRequest, DeleteCompleted),
    (STORAGE_COPY_REQUESTED, STORAGE_COPY_COMPLETED, CopyRequest, CopyCompleted),
    (STORAGE_PRESIGN_REQUESTED, STORAGE_PRESIGN_COMPLETED, PresignRequest, PresignCompleted),
    (
        STORAGE_METADATA_UPDATE_REQUESTED,
        STORAGE_METADATA_UPDATE_COMPLETED,
        MetadataUpdateRequest,
        MetadataUpdateCompleted,
    ),
    (STORAGE_PROCESS_REQUESTED, STORAGE_PROCESS_COMPLETED, ProcessRequest, ProcessCompleted),
)


class StorageIntegrityError(RequestFailedError):
    """The bytes of a get do not match the SHA-256 the worker reports for the object
    (corrupted at rest or on the way); code `precondition_failed`, retryable. A
    `StorageFailedError`."""


def register_storage(registry: ReplyRegistry) -> ReplyRegistry:
    """Register the eight storage request types in `registry`, each answered by progress,
    its completed type, or `failed`; return `registry`."""
    for request_type, completed_type, request_model, completed_model in _KINDS:
        registry.register(
            request_type,
            {
                STORAGE_PROGRESS: ReplyType(StorageProgress, ReplyRole.PROGRESS),
                completed_type: ReplyType(completed_model, ReplyRole.COMPLETED),
                STORAGE_FAILED: ReplyType(StorageFailed, ReplyRole.FAILED),
            },
            request_model=request_model,
        )
    return registry


def put_request(
    key: str,
    data: bytes,
    *,
    content_type: str | None = None,
    metadata: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    if_absent: bool = False,
    backend: str | None = None,
    inline_limit: int = DEFAULT_INLINE_LIMIT,
) -> PutRequest:
    """The request storing `data` inline under `key`, with its SHA-256.

    Raises:
        ValueError: `data` is over `inline_limit` bytes (nothing is sent: ask for an upload
            URL with `presign(key, method="PUT")` and upload to it).
        pydantic.ValidationError: a malformed key, backend, metadata or tag name.
    """
    if len(data) > inline_limit:
        raise ValueError(
            f"{len(data)} bytes is over the inline limit ({inline_limit} bytes): ask for an"
            ' upload URL with presign(key, method="PUT") and upload the content to it'
        )
    return PutRequest(
        key=key,
        backend=backend,
        content_base64=base64.b64encode(data).decode("ascii"),
        content_type=content_type,
        metadata=dict(metadata or {}),
        tags=dict(tags or {}),
        sha256=hashlib.sha256(data).hexdigest(),
        if_absent=if_absent,
    )


def copy_request(
    source: str,
    key: str,
    *,
    move: bool = False,
    if_absent: bool = False,
    source_backend: str | None = None,
    backend: str | None = None,
) -> CopyRequest:
    """The request copying (or moving) `source` to `key`.

    Raises:
        pydantic.ValidationError: a malformed key or backend name.
    """
    # Validated as one document, so a malformed source is reported as `source.…`.
    return CopyRequest.model_validate(
        {
            "source": {"key": source, "backend": source_backend},
            "key": key,
            "backend": backend,
            "move": move,
            "if_absent": if_absent,
        }
    )


def presign_request(
    key: str,
    method: Literal["GET", "PUT"] = "GET",
    *,
    expires_in: int = 900,
    content_type: str | None = None,
    backend: str | None = None,
) -> PresignRequest:
    """The request for a URL to GET or PUT `key` directly.

    Raises:
        pydantic.ValidationError: a malformed key, method or backend, or `expires_in` out
            of range (1 s to 7 days).
    """
    return PresignRequest(
        key=key, backend=backend, method=method, expires_in=expires_in, content_type=content_type
    )


def inline_content(completed: GetCompleted) -> bytes | None:
    """The bytes of a get answered inline (None: the answer is a URL), checked against the
    object's SHA-256 when the worker reports one.

    Raises:
        StorageIntegrityError: the bytes do not match the object's SHA-256.
    """
    if completed.content_base64 is None:
        return None
    data = base64.b64decode(completed.content_base64)
    checksum = completed.object.checksum
    if (
        checksum is not None
        and checksum.algorithm == "sha256"
        and hashlib.sha256(data).hexdigest() != checksum.value
    ):
        raise StorageIntegrityError(
            ErrorInfo(
                code=ErrorCode.PRECONDITION_FAILED,
                message=f"the bytes received for {completed.object.key!r} do not match"
                " the object's SHA-256",
                retryable=True,
            )
        )
    return data
