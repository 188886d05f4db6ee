"""An in-memory stand-in for `KafkaPublisher` that records what was sent."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import KafkaTimeoutError

from ferryman.codec import header_value
from ferryman.contracts import LLM_CHAT_FAILED, ChatFailed
from ferryman_runtime.replies import ReplyStream
from llm_worker.chat.replies import ChatReplies

Sent = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]


class RawPublisher:
    """Records (topic, key, value, headers); fails DLQ sends while `dlq_down` is set."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.dlq_down = False
        self.replies_down = False

    async def send(self, topic: str, value: bytes | None, *, key: bytes | None, headers: Any = ()):
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        down = self.dlq_down if topic.endswith(".dlq") else self.replies_down
        if down:
            future.set_exception(KafkaTimeoutError())
        else:
            self.sent.append((topic, key, value, list(headers)))
            future.set_result(None)
        return future

    async def send_and_wait(
        self, topic: str, value: bytes | None, *, key: bytes | None, headers: Any = ()
    ):
        await (await self.send(topic, value, key=key, headers=headers))

    def on(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s[0] == topic]

    def types(self, topic: str) -> list[str | None]:
        return [header_value(h, "ce_type") for _, _, _, h in self.on(topic)]


def chat_replies(
    publisher: Any,
    *,
    topic: str = "r",
    request_id: str = "q",
    extensions: dict[str, str] | None = None,
) -> ChatReplies:
    """The chat replies of one execution, published through `publisher`."""
    stream = ReplyStream(
        publisher,
        topic=topic,
        request_id=request_id,
        source="/ferryman/test",
        extensions=extensions or {},
        failed_type=LLM_CHAT_FAILED,
        failed_model=ChatFailed,
    )
    return ChatReplies(stream)
