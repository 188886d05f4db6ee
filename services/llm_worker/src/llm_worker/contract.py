"""What the LLM worker accepts and answers, declared to the shared request pipeline."""

from __future__ import annotations

from ferryman.contracts import LLM_CHAT_FAILED, LLM_CHAT_REQUESTED, ChatFailed, ChatRequest
from ferryman.contracts.events import EXT_TRACEPARENT
from ferryman_runtime.job import Job, RequestSpec
from llm_worker.chat.replies import ChatReplies
from llm_worker.chat.service import ChatJob, ChatService

CHAT_REQUESTS = RequestSpec[ChatRequest](
    requests={LLM_CHAT_REQUESTED: ChatRequest},
    failed_type=LLM_CHAT_FAILED,
    failed_model=ChatFailed,
    noun="chat request",
)
"""`ferryman.llm.chat.requested` in, chunks, restarts and `completed` or `failed` out."""


class ChatRequests:
    """The pipeline's service: hands each chat job to the `ChatService`.

    Args:
        service: executes chat requests.
    """

    def __init__(self, service: ChatService) -> None:
        self._service = service

    async def execute(self, job: Job[ChatRequest]) -> None:
        """Run one chat request to its terminal event.

        Raises:
            aiokafka.errors.KafkaError: results were not acknowledged.
        """
        await self._service.execute(
            ChatJob(
                request=job.request,
                replies=ChatReplies(job.replies, progress_events=job.request.stream),
                deadline=job.deadline,
                tenant=job.tenant,
                tenant_share=job.tenant_share,
                key=(job.event.source, job.event.id),
                traceparent=job.event.extension(EXT_TRACEPARENT),
            )
        )
