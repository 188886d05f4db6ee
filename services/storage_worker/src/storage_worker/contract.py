"""What the storage_worker accepts and answers, declared to the shared request pipeline."""

from __future__ import annotations

from typing import cast

from pydantic import BaseModel

from ferryman.contracts.storage import (
    STORAGE_COPY_REQUESTED,
    STORAGE_DELETE_REQUESTED,
    STORAGE_FAILED,
    STORAGE_GET_REQUESTED,
    STORAGE_HEAD_REQUESTED,
    STORAGE_LIST_REQUESTED,
    STORAGE_METADATA_UPDATE_REQUESTED,
    STORAGE_PRESIGN_REQUESTED,
    STORAGE_PROCESS_REQUESTED,
    STORAGE_PUT_REQUESTED,
    CopyRequest,
    DeleteRequest,
    GetRequest,
    HeadRequest,
    ListRequest,
    MetadataUpdateRequest,
    PresignRequest,
    ProcessRequest,
    PutRequest,
    StorageFailed,
)
from ferryman_runtime.job import Job, RequestSpec
from storage_worker.service import StorageRequest, StorageService

STORAGE_REQUESTS = RequestSpec[BaseModel](
    requests={
        STORAGE_PUT_REQUESTED: PutRequest,
        STORAGE_GET_REQUESTED: GetRequest,
        STORAGE_HEAD_REQUESTED: HeadRequest,
        STORAGE_LIST_REQUESTED: ListRequest,
        STORAGE_DELETE_REQUESTED: DeleteRequest,
        STORAGE_COPY_REQUESTED: CopyRequest,
        STORAGE_PRESIGN_REQUESTED: PresignRequest,
        STORAGE_METADATA_UPDATE_REQUESTED: MetadataUpdateRequest,
        STORAGE_PROCESS_REQUESTED: ProcessRequest,
    },
    failed_type=STORAGE_FAILED,
    failed_model=StorageFailed,
    noun="storage request",
)
"""Object operations in; one `completed` of the request's kind or `failed` out."""


class StorageRequests:
    """The pipeline's service: hands each job to the `StorageService`."""

    def __init__(self, service: StorageService) -> None:
        self._service = service

    async def execute(self, job: Job[BaseModel]) -> None:
        """Run one request to its terminal event.

        Raises:
            aiokafka.errors.KafkaError: results were not acknowledged.
        """
        # The spec admits only the storage request models.
        await self._service.execute(cast(Job[StorageRequest], job))
