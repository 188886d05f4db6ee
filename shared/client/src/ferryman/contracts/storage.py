"""Storage requests and replies (the `data` of Ferryman's storage CloudEvents).

Producers ask the storage_worker to put, get, inspect, list, delete, copy or move objects,
to sign URLs, and to update an object's metadata. Keys are relative to the tenant's own
space (its bucket and prefix, from the worker's policy file): a tenant never names, sees or
reaches anything outside it. Replies end with one `completed` of the request's kind or one
`failed` in the shared taxonomy; long transfers publish `progress` on the way.

Bytes travel through Kafka only up to a small inline limit (base64, 256 KiB by default):
larger content moves by reference, a presigned URL the producer uploads to or downloads
from (the claim-check pattern).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal, Self
from urllib.parse import quote, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from ferryman.contracts.errors import ErrorInfo

STORAGE_PUT_REQUESTED: Final = "ferryman.storage.put.requested"
STORAGE_GET_REQUESTED: Final = "ferryman.storage.get.requested"
STORAGE_HEAD_REQUESTED: Final = "ferryman.storage.head.requested"
STORAGE_LIST_REQUESTED: Final = "ferryman.storage.list.requested"
STORAGE_DELETE_REQUESTED: Final = "ferryman.storage.delete.requested"
STORAGE_COPY_REQUESTED: Final = "ferryman.storage.copy.requested"
STORAGE_PRESIGN_REQUESTED: Final = "ferryman.storage.presign.requested"
STORAGE_METADATA_UPDATE_REQUESTED: Final = "ferryman.storage.metadata.update.requested"
STORAGE_PROCESS_REQUESTED: Final = "ferryman.storage.process.requested"

STORAGE_PROGRESS: Final = "ferryman.storage.progress"
STORAGE_PUT_COMPLETED: Final = "ferryman.storage.put.completed"
STORAGE_GET_COMPLETED: Final = "ferryman.storage.get.completed"
STORAGE_HEAD_COMPLETED: Final = "ferryman.storage.head.completed"
STORAGE_LIST_COMPLETED: Final = "ferryman.storage.list.completed"
STORAGE_DELETE_COMPLETED: Final = "ferryman.storage.delete.completed"
STORAGE_COPY_COMPLETED: Final = "ferryman.storage.copy.completed"
STORAGE_PRESIGN_COMPLETED: Final = "ferryman.storage.presign.completed"
STORAGE_METADATA_UPDATE_COMPLETED: Final = "ferryman.storage.metadata.update.completed"
STORAGE_PROCESS_COMPLETED: Final = "ferryman.storage.process.completed"
STORAGE_FAILED: Final = "ferryman.storage.failed"

STORAGE_OBJECT_CREATED: Final = "ferryman.storage.object.created"
"""On the events topic, keyed by `tenant/backend/key`: an object was written (put, copy,
move)."""
STORAGE_OBJECT_DELETED: Final = "ferryman.storage.object.deleted"
STORAGE_OBJECT_METADATA_CHANGED: Final = "ferryman.storage.object.metadata_changed"

DEFAULT_STORAGE_REQUEST_TOPIC: Final = "storage.requests"
DEFAULT_STORAGE_REPLY_TOPIC: Final = "storage.results"
DEFAULT_STORAGE_EVENTS_TOPIC: Final = "storage.events"

DEFAULT_INLINE_LIMIT: Final = 256 * 1024
"""Bytes of content carried inline (before base64) unless the worker is configured otherwise."""

ObjectKey = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
"""A key in the tenant's space (`reports/2026/q3.pdf`). The worker normalises it and refuses
one that tries to leave the space (`..`, absolute paths, backslashes, encoded separators)."""
BackendName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
"""A backend of the tenant's policy (`local`, `s3`, …); None: the tenant's default."""
MetadataMap = dict[
    Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_\-]{1,128}$")],
    Annotated[str, StringConstraints(max_length=1024)],
]
"""User metadata and tags: names of letters, digits, `_` and `-` (what every backend
accepts), values of printable text."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Checksum(_Strict):
    """A checksum of an object's bytes, as lowercase hex."""

    algorithm: Literal["sha256", "crc32c"]
    value: str = Field(pattern=r"^[0-9a-f]{8,64}$")


class Lineage(_Strict):
    """Where a derived object came from (a pipeline's output)."""

    source_key: str
    source_version: str | None = None
    pipeline: str
    step: str
    pipeline_version: str | None = None


class ObjectInfo(_Strict):
    """An object as the tenant sees it."""

    backend: str
    key: str
    """In the tenant's space (its prefix removed)."""
    size: int = Field(ge=0)
    content_type: str | None = None
    checksum: Checksum | None = None
    """The SHA-256 (what clients verify reads against)."""
    checksums: list[Checksum] = Field(default_factory=list[Checksum])
    """Every checksum known of the object: the SHA-256 and, for objects the worker stored,
    the CRC32C."""
    etag: str | None = None
    version: str | None = None
    """The backend's version or generation of this content, where it has one."""
    last_modified: datetime | None = None
    metadata: dict[str, str] = Field(default_factory=dict[str, str])
    tags: dict[str, str] = Field(default_factory=dict[str, str])
    lineage: Lineage | None = None


class ObjectRef(_Strict):
    """An object of the tenant's space."""

    key: ObjectKey
    backend: BackendName | None = None


DATAREF_SCHEME: Final = "ferryman-storage"


def object_dataref(backend: str, key: str) -> str:
    """The `dataref` naming an object of the tenant's space:
    `ferryman-storage://<backend>/<key, percent-encoded but for />`."""
    return f"{DATAREF_SCHEME}://{backend}/{quote(key, safe='/')}"


def parse_dataref(dataref: str) -> ObjectRef:
    """The object a `dataref` names.

    Raises:
        ValueError: it is not a `ferryman-storage://<backend>/<key>` reference.
    """
    parts = urlsplit(dataref)
    if parts.scheme != DATAREF_SCHEME or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"a dataref is {DATAREF_SCHEME}://<backend>/<key>")
    return ObjectRef(key=unquote(parts.path.removeprefix("/")), backend=parts.netloc)


class SourceRef(_Strict):
    """Content the worker fetches itself for a put: an `http(s)` URL (only schemes and hosts
    the worker's policy allows; never an internal address unless the policy names it)."""

    url: str = Field(min_length=8, max_length=8192, pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://")
    headers: dict[str, str] = Field(default_factory=dict[str, str])
    """Sent with the fetch (e.g. a presigned URL's required headers); never logged."""


class PutRequest(_Strict):
    """The `data` of `ferryman.storage.put.requested`: store content under `key`, given
    inline (`content_base64`) or fetched by the worker from `source` (exactly one of them)."""

    key: ObjectKey
    backend: BackendName | None = None
    content_base64: str | None = None
    """The bytes, base64, up to the worker's inline limit. Larger content goes to a URL from
    a `presign` request with `method: PUT`, or comes from `source`."""
    source: SourceRef | None = None
    """A URL the worker streams the content from (any size; progress is reported)."""
    content_type: str | None = Field(default=None, max_length=256)
    """Checked against what the bytes are (detected, never trusted), where the policy limits
    content types."""
    metadata: MetadataMap = Field(default_factory=dict)
    tags: MetadataMap = Field(default_factory=dict)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """The bytes' SHA-256 as the producer computed it: a mismatch fails `precondition_failed`
    and stores nothing."""
    crc32c: str | None = Field(default=None, pattern=r"^[0-9a-f]{8}$")
    """The bytes' CRC32C (Castagnoli), as 8 lowercase hex digits: checked like `sha256`."""
    if_absent: bool = False
    """Only create: fail `conflict` when the key exists."""

    @model_validator(mode="after")
    def _one_content(self) -> Self:
        if (self.content_base64 is None) == (self.source is None):
            raise ValueError("give exactly one of content_base64 and source")
        return self


class GetRequest(_Strict):
    """The `data` of `ferryman.storage.get.requested`."""

    key: ObjectKey
    backend: BackendName | None = None
    delivery: Literal["auto", "inline", "url"] = "auto"
    """`inline`: the bytes in the reply (`too_large` past the inline limit); `url`: a
    presigned GET URL; `auto`: inline when small enough, else a URL."""
    url_expires_in: int = Field(default=900, ge=1, le=7 * 24 * 3600)


class HeadRequest(_Strict):
    """The `data` of `ferryman.storage.head.requested`."""

    key: ObjectKey
    backend: BackendName | None = None


class ListRequest(_Strict):
    """The `data` of `ferryman.storage.list.requested`."""

    prefix: str = Field(default="", max_length=1024)
    delimiter: Literal["/"] | None = None
    """`/`: keys below the next `/` are rolled up into `prefixes` (folders)."""
    backend: BackendName | None = None
    page_size: int = Field(default=1000, ge=1, le=1000)
    page_token: str | None = Field(default=None, max_length=4096)


class DeleteRequest(_Strict):
    """The `data` of `ferryman.storage.delete.requested` (deleting a missing key succeeds,
    with `deleted: false`)."""

    key: ObjectKey
    backend: BackendName | None = None


class CopyRequest(_Strict):
    """The `data` of `ferryman.storage.copy.requested`: `source` to `key` (`move`: then the
    source is deleted)."""

    source: ObjectRef
    key: ObjectKey
    backend: BackendName | None = None
    """Where the copy goes (None: the tenant's default); it may differ from the source's."""
    move: bool = False
    if_absent: bool = False


class PresignRequest(_Strict):
    """The `data` of `ferryman.storage.presign.requested`: a URL to GET or PUT one object
    directly, within the tenant's maximum expiry."""

    key: ObjectKey
    backend: BackendName | None = None
    method: Literal["GET", "PUT"] = "GET"
    expires_in: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    content_type: str | None = Field(default=None, max_length=256)
    """For PUT: the content type the upload must send."""


class MetadataUpdateRequest(_Strict):
    """The `data` of `ferryman.storage.metadata.update.requested`: replace what is given
    (metadata and tags whole; None leaves them)."""

    key: ObjectKey
    backend: BackendName | None = None
    metadata: MetadataMap | None = None
    tags: MetadataMap | None = None
    content_type: str | None = Field(default=None, max_length=256)


class ProcessRequest(_Strict):
    """The `data` of `ferryman.storage.process.requested`: run the pipeline `pipeline` of the
    worker's policy on one object. Each step's output is stored as a derived object with
    lineage; the source is never changed."""

    key: ObjectKey
    backend: BackendName | None = None
    pipeline: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    force: bool = False
    """Run again even when derived objects of this source version and pipeline version
    exist (by default they are reused and reported with `reused: true`)."""


class StorageProgress(_Strict):
    """The `data` of `ferryman.storage.progress`."""

    stage: str
    bytes_done: int = Field(ge=0)
    bytes_total: int | None = Field(default=None, ge=0)
    sequence: int = Field(ge=0)


class PutCompleted(_Strict):
    """The `data` of `ferryman.storage.put.completed`."""

    object: ObjectInfo
    created: bool = True
    """False: a redelivered request found its own earlier write (nothing written again)."""


class GetCompleted(_Strict):
    """The `data` of `ferryman.storage.get.completed`: the bytes inline, or a URL."""

    object: ObjectInfo
    content_base64: str | None = None
    url: str | None = None
    url_expires_at: datetime | None = None


class HeadCompleted(_Strict):
    """The `data` of `ferryman.storage.head.completed`."""

    object: ObjectInfo


class ListCompleted(_Strict):
    """The `data` of `ferryman.storage.list.completed`."""

    objects: list[ObjectInfo]
    prefixes: list[str] = Field(default_factory=list[str])
    next_page_token: str | None = None


class DeleteCompleted(_Strict):
    """The `data` of `ferryman.storage.delete.completed`."""

    backend: str
    key: str
    deleted: bool


class CopyCompleted(_Strict):
    """The `data` of `ferryman.storage.copy.completed`."""

    object: ObjectInfo
    moved: bool = False


class PresignCompleted(_Strict):
    """The `data` of `ferryman.storage.presign.completed`."""

    url: str
    method: Literal["GET", "PUT"]
    expires_at: datetime
    headers: dict[str, str] = Field(default_factory=dict[str, str])
    """Headers the request to `url` must send (e.g. its `Content-Type`)."""


class MetadataUpdateCompleted(_Strict):
    """The `data` of `ferryman.storage.metadata.update.completed`."""

    object: ObjectInfo


class ProcessCompleted(_Strict):
    """The `data` of `ferryman.storage.process.completed`."""

    source: ObjectInfo
    pipeline: str
    outputs: list[ObjectInfo] = Field(default_factory=list[ObjectInfo])
    """The derived objects, each with its `lineage` (source, pipeline, step, version)."""
    facts: dict[str, str] = Field(default_factory=dict[str, str])
    """What the steps found out about the source, by `step.name` (`detect.content_type`,
    `checksum.crc32c`, `extract_text.pages`, `metadata.width`, …)."""
    reused: bool = False
    """True: the outputs of an earlier run on this source version were current."""


class StorageFailed(_Strict):
    """The `data` of `ferryman.storage.failed`."""

    error: ErrorInfo
    step: str | None = None
    """For a `process` request: the pipeline step that failed (the source is untouched)."""


class ObjectEvent(_Strict):
    """The `data` of the object events on the events topic (key: `tenant/backend/key`)."""

    tenant: str
    object: ObjectInfo
    cause: Literal["put", "copy", "move", "delete", "metadata", "process"]
    request_id: str | None = None
