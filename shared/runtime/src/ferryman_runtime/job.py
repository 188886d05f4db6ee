"""What a worker declares to the kit (`RequestSpec`), what its service implements
(`RequestService`) and what each execution gets (`Job`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel

from ferryman.codec import IncomingEvent
from ferryman_runtime.replies import ReplyStream

RequestT = TypeVar("RequestT", bound=BaseModel)


@dataclass(frozen=True)
class RequestSpec(Generic[RequestT]):
    """What a worker declares to the pipeline.

    Args:
        requests: accepted `ce_type` → the model its `data` must validate against.
        failed_type: the event type of this domain's `failed` reply.
        failed_model: the `failed` payload; built as `failed_model(error=ErrorInfo)`.
        noun: names the requests in error messages (`invalid <noun>: …`).
    """

    requests: Mapping[str, type[RequestT]]
    failed_type: str
    failed_model: type[BaseModel]
    noun: str = "request"


@dataclass(frozen=True)
class Job(Generic[RequestT]):
    """One validated request to execute, and where its replies go."""

    request: RequestT
    event: IncomingEvent
    replies: ReplyStream
    deadline: float | None
    """`loop.time()` by which the work must be done (the request's expiry), if any."""
    tenant: str | None
    tenant_share: float
    """This replica's share of the tenant's budget: 1 when the record is keyed by its tenant
    (all of the tenant's requests share one partition), else the replica's partition share."""

    @property
    def event_type(self) -> str:
        """The request's `ce_type`."""
        return self.event.type


class RequestService(Protocol[RequestT]):  # pyright: ignore[reportInvalidTypeVarUse]
    """A worker's service: executes a job and ends it with a terminal reply."""

    async def execute(self, job: Job[RequestT], /) -> None:
        """Run the job; provider/upstream failures end in `job.replies.fail(...)`.

        Raises:
            aiokafka.errors.KafkaError: replies were not acknowledged (the record is retried).
        """
        ...
