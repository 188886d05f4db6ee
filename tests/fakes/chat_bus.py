"""A scripted stand-in for Kafka behind a real `FerrymanClient`: it records what the client
publishes and answers a request with reply records encoded as a worker encodes them (reply
token, run id, correlation id, unique `ce_id`), routed into the client's reply reader."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ferryman.client import FerrymanClient
from ferryman.codec import encode_event, header_value
from ferryman.contracts import LLM_CHAT_FAILED, ChatFailed, ErrorCode, ErrorInfo
from ferryman.contracts.events import EXT_REPLY_TOKEN, EXT_RUN_ID
from ferryman.contracts.mcp import MCP_CANCEL_REQUESTED, CancelRequest

RUN = "1700000000000-aaaaaaaaaaaa"

Reply = tuple[str, BaseModel] | tuple[str, BaseModel, str]
"""(event type, data[, ce_id]) of one reply event; the `ce_id` is unique unless given."""

CANCELLED: Reply = (
    LLM_CHAT_FAILED,
    ChatFailed(
        error=ErrorInfo(
            code=ErrorCode.CANCELLED, message="cancelled by the producer", retryable=False
        )
    ),
)


@dataclass
class Published:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def type(self) -> str | None:
        return header_value(self.headers, "ce_type")


@dataclass
class ScriptedBus:
    """Answers the first request with `replies`, and a cancel of it with `on_cancel`."""

    replies: Sequence[Reply]
    on_cancel: Sequence[Reply] = ()
    run_id: str | None = RUN
    published: list[Published] = field(default_factory=list[Published])
    _client: FerrymanClient | None = None
    _request: tuple[str, str | None] | None = None
    _sent_replies: int = 0

    def attach(self, client: FerrymanClient) -> FerrymanClient:
        """Make `client` publish here; return it."""
        client._publisher = self  # pyright: ignore[reportPrivateUsage, reportAttributeAccessIssue]
        self._client = client
        return client

    @property
    def cancels(self) -> list[Published]:
        return [p for p in self.published if p.type == MCP_CANCEL_REQUESTED]

    def cancel_requests(self) -> list[CancelRequest]:
        return [CancelRequest.model_validate_json(p.value or b"") for p in self.cancels]

    async def send_and_wait(
        self, topic: str, value: bytes | None, *, key: bytes | None, headers: Any = ()
    ) -> None:
        record = Published(topic, key, value, list(headers))
        self.published.append(record)
        if record.type == MCP_CANCEL_REQUESTED:
            if self._request is not None:
                self.route(self.on_cancel)
        elif self._request is None:
            request_id = header_value(record.headers, "ce_id")
            assert request_id is not None
            self._request = (request_id, header_value(record.headers, f"ce_{EXT_REPLY_TOKEN}"))
            self.route(self.replies)

    def route(self, replies: Sequence[Reply]) -> None:
        """Deliver `replies` to the request, as the worker's reply records."""
        assert self._client is not None, "attach the client first"
        assert self._request is not None, "no request was published"
        request_id, token = self._request
        for event_type, payload, *given_id in replies:
            extensions = {} if self.run_id is None else {EXT_RUN_ID: self.run_id}
            if token is not None:
                extensions[EXT_REPLY_TOKEN] = token
            headers = encode_event(
                event_type=event_type,
                source="/ferryman/llm-worker",
                data=b"",
                correlation_id=request_id,
                extensions=extensions,
                event_id=given_id[0] if given_id else f"{request_id}.{self._sent_replies}",
            )
            self._sent_replies += 1
            value = payload.model_dump_json(exclude_none=True).encode()
            self._client._replies.route(headers, value)  # pyright: ignore[reportPrivateUsage]
