"""The ports of dataref resolution: what the chat service asks (`DataRefResolver`) and what
resolution needs of the storage_worker (`ObjectStorage`)."""

from __future__ import annotations

from typing import Literal, Protocol

from ferryman.contracts import ChatRequest
from ferryman.contracts.storage import ObjectInfo, ObjectRef, ProcessCompleted

ImageDelivery = Literal["url", "inline"]
"""How images reach a provider: a presigned URL it fetches itself, or the bytes inline (a
`data:` URL)."""


class DataRefResolver(Protocol):
    """Replaces the dataref parts of a chat request with what they name."""

    async def resolve(
        self,
        request: ChatRequest,
        *,
        tenant: str | None,
        images: ImageDelivery,
        within: float,
    ) -> ChatRequest:
        """Return `request` with every dataref part replaced: by a `TextPart` (the object's
        text under a header line naming it) or an `ImagePart` (delivered as `images` says).

        Args:
            request: the chat request (with dataref parts).
            tenant: the request's tenant, in whose storage space the objects are looked up.
            images: how images are given to the provider(s) that may serve the request.
            within: seconds left for resolution (`math.inf`: no deadline).

        Raises:
            FerrymanError: an object is missing (`not_found`), out of the tenant's reach
                (`permission_denied`), unusable as asked (`invalid_request`, `too_large`), or
                the storage_worker failed or did not answer in time (`unavailable`,
                `timeout`; retryable).
        """
        ...


class ObjectStorage(Protocol):
    """The storage operations resolution uses, in one tenant's space. Every method raises
    `FerrymanError` in the shared taxonomy (mapped at the implementation's edge)."""

    async def head(self, ref: ObjectRef, *, tenant: str | None, timeout: float) -> ObjectInfo:
        """What is known of the object (size, content type, …).

        Raises:
            FerrymanError: `not_found`, `permission_denied`, `timeout`, `unavailable`, ….
        """
        ...

    async def read(
        self, ref: ObjectRef, *, tenant: str | None, timeout: float, limit: int
    ) -> bytes:
        """The object's first `limit` bytes at most (all of them when it is no larger).

        Raises:
            FerrymanError: `not_found`, `permission_denied`, `timeout`, `unavailable`, ….
        """
        ...

    async def presign(
        self, ref: ObjectRef, *, tenant: str | None, timeout: float, expires_in: int
    ) -> str | None:
        """A presigned GET URL of the object, valid `expires_in` seconds; None when its
        backend cannot sign URLs.

        Raises:
            FerrymanError: `not_found`, `permission_denied`, `timeout`, `unavailable`, ….
        """
        ...

    async def process(
        self, ref: ObjectRef, *, tenant: str | None, timeout: float, pipeline: str
    ) -> ProcessCompleted:
        """Run the storage pipeline `pipeline` on the object; its outputs carry lineage.

        Raises:
            FerrymanError: the pipeline failed (the step named in the message), `not_found`,
                `timeout`, `unavailable`, ….
        """
        ...
