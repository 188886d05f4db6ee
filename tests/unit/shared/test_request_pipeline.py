"""The shared request pipeline: dead letters for poison and bugs, reply-topic policy, dedupe,
run identity, and no commit while results are unacknowledged."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaTimeoutError
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from ferryman.codec import encode_binary, encode_structured, header_value
from ferryman.contracts import ChatRequest, ErrorInfo
from ferryman.contracts.events import DLQ_REPLAY_OF
from ferryman.publisher import RecordTooLarge
from ferryman_runtime.dedupe import RecentRequests
from ferryman_runtime.job import Job, RequestSpec
from ferryman_runtime.metrics import ConsumerMetrics
from ferryman_runtime.pipeline import RequestPipeline
from ferryman_runtime.reply_topics import ReplyTopicPolicy, TopicDirectory
from llm_worker.chat.service import ChatService, LlmMetrics
from llm_worker.chat.streaming import Completion, StreamEvent, TextDelta
from llm_worker.contract import CHAT_REQUESTS, ChatRequests
from llm_worker.providers.mock import MockChatModel
from llm_worker.providers.resolver import ModelResolver
from tests.fakes.publisher import RawPublisher


class BuggyModel:
    """A provider adapter with a bug: raises a plain exception mid-stream."""

    provider = "buggy"

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        yield TextDelta(text="partial")
        raise KeyError("oops")

    async def generate(self, request: ChatRequest, model: str) -> Completion:
        raise KeyError("oops")

    async def list_models(self) -> list[str]:
        return []

    async def aclose(self) -> None:
        return None


EXISTING = {"replies", "tenant-a.results", "other.results", "requests", "requests.dlq"}


def _pipeline(
    publisher: RawPublisher,
    *,
    by_tenant: dict[str, list[str]] | None = None,
    service: Any = None,
    spec: Any = CHAT_REQUESTS,
) -> RequestPipeline[Any]:
    registry = CollectorRegistry()
    resolver = ModelResolver({"mock": MockChatModel(), "buggy": BuggyModel()}, {})

    async def topics() -> set[str]:
        return EXISTING

    return RequestPipeline(
        spec=spec,
        service=service or ChatRequests(ChatService(resolver, LlmMetrics(registry))),
        publisher=publisher,  # type: ignore[arg-type]
        recent=RecentRequests(window=60, max_entries=100),
        metrics=ConsumerMetrics(registry),
        source="/test/worker",
        reply_topics=ReplyTopicPolicy(
            default="replies",
            patterns=["*.results"],
            by_tenant=by_tenant,
            own_topics=["requests", "requests.dlq"],
        ),
        directory=TopicDirectory(topics),
        default_reply_topic="replies",
        dlq_topic="requests.dlq",
    )


def _attributes(request_id: str | None = "r1", **extensions: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "type": "ferryman.llm.chat.requested",
        "source": "/p",
        "datacontenttype": "application/json",
        **extensions,
    }
    if request_id is not None:
        attributes["id"] = request_id
    return attributes


def _data(model: str = "mock/echo") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()


def _record(
    model: str = "mock/echo",
    request_id: str = "r1",
    offset: int = 7,
    *,
    value: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
    extra_headers: Sequence[tuple[str, bytes]] = (),
    **extensions: str,
) -> ConsumerRecord[bytes, bytes]:
    encoded, body = encode_binary(_attributes(request_id, **extensions), _data(model))
    if headers is None:
        headers = encoded
    return ConsumerRecord(
        topic="requests",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=body if value is None else value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(body),
        headers=(*headers, *extra_headers),
    )


def _structured(document: dict[str, Any], offset: int = 7) -> ConsumerRecord[bytes, bytes]:
    value = json.dumps(document).encode()
    return ConsumerRecord(
        topic="requests",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(value),
        headers=(("content-type", b"application/cloudevents+json"),),
    )


async def test_a_handler_bug_dead_letters_the_record_and_publishes_failed_internal() -> None:
    publisher = RawPublisher()

    await _pipeline(publisher)(_record("buggy/x"), 1)

    [letter] = publisher.on("requests.dlq")
    assert header_value(letter[3], "dlq-reason") == "handler"
    assert header_value(letter[3], "dlq-error-type") == "KeyError"
    assert publisher.types("replies") == ["ferryman.llm.chat.chunk", "ferryman.llm.chat.failed"]
    failed = json.loads(publisher.on("replies")[-1][2] or b"")
    assert failed["error"]["code"] == "internal"


async def test_the_same_request_twice_is_executed_once() -> None:
    publisher = RawPublisher()
    pipeline = _pipeline(publisher)

    await pipeline(_record(offset=1), 1)
    await pipeline(_record(offset=2), 1)

    assert publisher.types("replies").count("ferryman.llm.chat.completed") == 1


async def test_a_replayed_dead_letter_runs_again_within_the_dedupe_window() -> None:
    publisher = RawPublisher()
    pipeline = _pipeline(publisher)
    await pipeline(_record("buggy/x", offset=1), 1)
    assert publisher.types("replies")[-1] == "ferryman.llm.chat.failed"

    replay = [(DLQ_REPLAY_OF, b"requests.dlq/0/0")]
    await pipeline(_record("mock/echo", offset=2, extra_headers=replay), 1)
    await pipeline(_record("mock/echo", offset=3, extra_headers=replay), 1)  # a duplicate replay

    assert publisher.types("replies").count("ferryman.llm.chat.completed") == 1


async def test_a_dlq_outage_raises_then_parks_once_and_answers_failed_once() -> None:
    publisher = RawPublisher()
    pipeline = _pipeline(publisher)
    publisher.dlq_down = True
    poison = _record(value=b"{not json")

    for attempt in (1, 2, 3):
        with pytest.raises(KafkaTimeoutError):
            await pipeline(poison, attempt)
    assert publisher.on("replies") == []
    publisher.dlq_down = False
    await pipeline(poison, 4)
    await pipeline(poison, 5)  # redelivered after the commit was lost

    [letter] = publisher.on("requests.dlq")
    assert letter[2] == b"{not json"
    assert header_value(letter[3], "dlq-attempts") == "4"
    assert header_value(letter[3], "dlq-reason") == "validation"
    assert publisher.types("replies") == ["ferryman.llm.chat.failed"]


async def test_a_reply_outage_after_the_dead_letter_retries_the_failed_reply_only() -> None:
    publisher = RawPublisher()
    pipeline = _pipeline(publisher)
    poison = _record(value=b"{not json")
    publisher.replies_down = True
    with pytest.raises(KafkaTimeoutError):
        await pipeline(poison, 1)
    publisher.replies_down = False
    await pipeline(poison, 2)

    assert len(publisher.on("requests.dlq")) == 1
    assert publisher.types("replies") == ["ferryman.llm.chat.failed"]


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(_record(headers=[]), id="no headers"),
        pytest.param(
            _record(headers=[(k, v) for k, v in _record().headers if k != "ce_id"]),
            id="binary without id",
        ),
        pytest.param(
            _structured({"specversion": "1.0", "type": "t", "source": "s", "data": {}}),
            id="structured without id",
        ),
        pytest.param(
            _structured({"specversion": "1.0", "id": "\ud800", "type": "t", "source": "s"}),
            id="lone surrogate id",
        ),
        pytest.param(
            _structured(
                {"specversion": "1.0", "id": "x", "type": "t", "source": "s", "tenant": "\udc00"}
            ),
            id="lone surrogate tenant",
        ),
        pytest.param(_record(request_id="x" * 600_000), id="600 KB id"),
    ],
)
async def test_undecodable_records_are_dead_lettered_without_a_reply(
    record: ConsumerRecord[bytes, bytes],
) -> None:
    publisher = RawPublisher()

    await _pipeline(publisher)(record, 1)

    [letter] = publisher.on("requests.dlq")
    assert header_value(letter[3], "dlq-reason") == "decode"
    assert [s for s in publisher.sent if s[0] != "requests.dlq"] == []


@pytest.mark.parametrize(
    ("reply_to", "tenant"),
    [
        ("__consumer_offsets", None),
        ("__transaction_state", None),
        (".", None),
        ("..", None),
        ("requests", None),  # the worker's own request topic
        ("requests.dlq", None),
        ("victim.private", None),  # matches no pattern
        ("other.results", "tenant-a"),  # tenant-a may only use tenant-a.*
        ("missing.results", None),  # allowed by pattern, but does not exist
    ],
)
async def test_refused_reply_topics_get_a_dead_letter_and_nothing_else(
    reply_to: str, tenant: str | None
) -> None:
    publisher = RawPublisher()
    pipeline = _pipeline(publisher, by_tenant={"tenant-a": ["tenant-a.*"]})
    record = _record(replyto=reply_to, tenant=tenant) if tenant else _record(replyto=reply_to)

    await pipeline(record, 1)

    [letter] = publisher.on("requests.dlq")
    assert header_value(letter[3], "dlq-reason") == "validation"
    assert "replyto" in (header_value(letter[3], "dlq-error-message") or "")
    assert [s[0] for s in publisher.sent] == ["requests.dlq"]


async def test_an_upper_case_reply_header_is_checked_too() -> None:
    publisher = RawPublisher()
    headers = [(k, v) for k, v in _record().headers] + [("CE_REPLYTO", b"__consumer_offsets")]

    await _pipeline(publisher)(_record(headers=headers), 1)

    assert [s[0] for s in publisher.sent] == ["requests.dlq"]


async def test_allowed_reply_topics_are_answered() -> None:
    publisher = RawPublisher()
    pipeline = _pipeline(publisher, by_tenant={"tenant-a": ["tenant-a.*"]})

    await pipeline(_record(request_id="a", replyto="other.results"), 1)
    await pipeline(_record(request_id="b", replyto="tenant-a.results", tenant="tenant-a"), 1)
    await pipeline(_record(request_id="c", tenant="tenant-a"), 1)  # the default topic

    assert publisher.types("other.results")[-1] == "ferryman.llm.chat.completed"
    assert publisher.types("tenant-a.results")[-1] == "ferryman.llm.chat.completed"
    assert publisher.types("replies")[-1] == "ferryman.llm.chat.completed"


async def test_every_reply_carries_the_run_id_and_ids_derived_from_it() -> None:
    publisher = RawPublisher()

    await _pipeline(publisher)(_record(replytoken="s3cret"), 1)

    headers = [h for _, _, _, h in publisher.on("replies")]
    runs = {header_value(h, "ce_runid") for h in headers}
    assert len(runs) == 1
    [run] = runs
    assert run is not None
    assert [header_value(h, "ce_id") for h in headers] == [
        f"{run}.{n}" for n in range(len(headers))
    ]
    assert {header_value(h, "ce_replytoken") for h in headers} == {"s3cret"}


class _Echo(BaseModel):
    text: str


class _Failed(BaseModel):
    error: ErrorInfo


class _Flaky:
    """Fails publishing the first time, then answers; records the run id of each execution."""

    def __init__(self) -> None:
        self.runs: list[str] = []

    async def execute(self, job: Job[_Echo]) -> None:
        self.runs.append(job.replies.run_id)
        await job.replies.emit("echo.chunk", job.request)
        if len(self.runs) == 1:
            raise KafkaTimeoutError()
        await job.replies.finish("echo.done", job.request)


_ECHO_SPEC = RequestSpec(requests={"echo": _Echo}, failed_type="echo.failed", failed_model=_Failed)


def _echo_record(offset: int = 1, **extensions: str) -> ConsumerRecord[bytes, bytes]:
    attributes = {"id": "e1", "type": "echo", "source": "/p", "datacontenttype": "application/json"}
    headers, body = encode_binary({**attributes, **extensions}, b'{"text": "hi"}')
    return _record(headers=headers, value=body, offset=offset)


async def test_a_retried_record_runs_again_under_a_new_run_id() -> None:
    publisher = RawPublisher()
    service = _Flaky()
    pipeline = _pipeline(publisher, service=service, spec=_ECHO_SPEC)

    with pytest.raises(KafkaTimeoutError):
        await pipeline(_echo_record(), 1)
    await pipeline(_echo_record(), 2)

    assert len(set(service.runs)) == 2
    assert sorted(service.runs) == service.runs  # run ids sort in the order runs started
    assert publisher.types("replies") == ["echo.chunk", "echo.chunk", "echo.done"]


async def test_a_wrong_type_is_named_in_the_failed_reply() -> None:
    publisher = RawPublisher()

    await _pipeline(publisher, service=_Flaky(), spec=_ECHO_SPEC)(_record(), 1)

    failed = json.loads(publisher.on("replies")[-1][2] or b"")
    assert "ce_type must be one of 'echo'" in failed["error"]["message"]


class _Silent:
    async def execute(self, job: Job[_Echo]) -> None:
        await job.replies.emit("echo.chunk", job.request)


async def test_a_service_that_forgets_its_terminal_reply_fails_the_request() -> None:
    publisher = RawPublisher()

    await _pipeline(publisher, service=_Silent(), spec=_ECHO_SPEC)(_echo_record(), 1)

    assert publisher.types("replies") == ["echo.chunk", "echo.failed"]


async def test_an_exhausted_record_is_dead_lettered_with_a_retryable_failed() -> None:
    publisher = RawPublisher()
    pipeline = _pipeline(publisher, service=_Flaky(), spec=_ECHO_SPEC)

    await pipeline.dead_letter_exhausted(_echo_record(), 5, KafkaTimeoutError())

    [letter] = publisher.on("requests.dlq")
    assert header_value(letter[3], "dlq-attempts") == "5"
    failed = json.loads(publisher.on("replies")[-1][2] or b"")
    assert failed["error"]["code"] == "unavailable"
    assert failed["error"]["retryable"] is True


async def test_a_structured_record_reaches_the_service() -> None:
    publisher = RawPublisher()
    headers, value = encode_structured(_attributes("s1"), json.loads(_data()))
    record = _record(headers=headers, value=value)

    await _pipeline(publisher)(record, 1)

    assert publisher.types("replies")[-1] == "ferryman.llm.chat.completed"


async def test_a_failed_reply_to_an_undecodable_record_echoes_its_reply_token() -> None:
    publisher = RawPublisher()
    poison = _record(value=b"{not json", replytoken="tok-1")

    await _pipeline(publisher)(poison, 1)

    [failed] = publisher.on("replies")
    assert header_value(failed[3], "ce_replytoken") == "tok-1"
    assert header_value(failed[3], "ce_correlationid") == "r1"


class _Huge:
    async def execute(self, job: Job[_Echo]) -> None:
        await job.replies.emit("echo.chunk", job.request)
        raise RecordTooLarge("replies", 5_000_000)


async def test_a_reply_too_large_for_the_topic_ends_the_request_with_failed_too_large() -> None:
    publisher = RawPublisher()

    await _pipeline(publisher, service=_Huge(), spec=_ECHO_SPEC)(_echo_record(), 1)

    assert publisher.types("replies") == ["echo.chunk", "echo.failed"]
    failed = json.loads(publisher.on("replies")[-1][2] or b"")
    assert failed["error"]["code"] == "too_large"
    runs = {header_value(h, "ce_runid") for _, _, _, h in publisher.on("replies")}
    assert len(runs) == 1


class _LeakyModel(BuggyModel):
    """An adapter bug whose exception quotes an upstream body echoing the API key."""

    provider = "leaky"

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        yield TextDelta(text="partial")
        raise KeyError("upstream said: Authorization: Bearer sk-proj-abcdefghijklmnop1234567890")


async def test_a_credential_in_an_unmapped_exception_reaches_neither_the_dlq_nor_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    publisher = RawPublisher()
    registry = CollectorRegistry()
    resolver = ModelResolver({"leaky": _LeakyModel()}, {})
    pipeline = _pipeline(
        publisher, service=ChatRequests(ChatService(resolver, LlmMetrics(registry)))
    )

    await pipeline(_record("leaky/x"), 1)

    [letter] = publisher.on("requests.dlq")
    assert "sk-proj-abcdefghijklmnop1234567890" not in repr(letter[3])
    assert "sk-proj-abcdefghijklmnop1234567890" not in caplog.text
    assert "KeyError" in (header_value(letter[3], "dlq-error-type") or "")
