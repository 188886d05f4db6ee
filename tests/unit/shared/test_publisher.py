"""KafkaPublisher's options and error classification, and the aiokafka internals it repairs."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    RecordListTooLargeError,
)
from aiokafka.structs import TopicPartition

from ferryman.publisher import (
    KafkaPublisher,
    ProducerRestarted,
    RecordTooLarge,
    _forget_producer_id,  # pyright: ignore[reportPrivateUsage]
    is_record_too_large,
)


@pytest.mark.parametrize(
    "error",
    [
        MessageSizeTooLargeError(),
        RecordListTooLargeError(),
        RecordTooLarge("replies", 2_000_000),
    ],
)
def test_size_refusals_are_recognised_as_record_too_large(error: KafkaError) -> None:
    assert is_record_too_large(error)
    assert not error.retriable


@pytest.mark.parametrize(
    "error",
    [
        OutOfOrderSequenceNumber(),
        KafkaConnectionError(),
        ProducerRestarted(),
        ValueError("record too large"),
    ],
)
def test_other_failures_are_not_record_too_large(error: BaseException) -> None:
    assert not is_record_too_large(error)


def test_record_too_large_names_the_topic_and_size_and_is_a_kafka_error() -> None:
    error = RecordTooLarge("t.llm.results", 5_000_123)

    assert isinstance(error, KafkaError)
    assert "t.llm.results" in str(error)
    assert "5000123" in str(error)
    assert error.topic == "t.llm.results"
    assert error.size == 5_000_123


def test_a_restarted_producer_tells_the_caller_to_send_again() -> None:
    assert ProducerRestarted().retriable


@pytest.mark.parametrize("option", ["acks", "enable_idempotence", "partitioner", "linger_ms"])
def test_connection_options_cannot_override_what_the_publisher_guarantees(option: str) -> None:
    with pytest.raises(ValueError, match=option):
        KafkaPublisher("127.0.0.1:9", client_id="t", connection={option: 1})


async def test_connection_options_reach_the_producer() -> None:
    publisher = KafkaPublisher(
        "127.0.0.1:9", client_id="t", connection={"security_protocol": "SSL"}
    )

    # aiokafka refuses SSL without an SSL context: proof the option got through.
    with pytest.raises(ValueError, match="ssl_context"):
        await publisher.start()


async def test_forgetting_the_producer_id_restarts_every_sequence_at_zero() -> None:
    # Guards the aiokafka internals `_forget_producer_id` relies on (aiokafka 0.14).
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", enable_idempotence=True)
    try:
        manager = producer._txn_manager  # pyright: ignore[reportPrivateUsage]
        assert manager is not None
        tp = TopicPartition("replies", 0)
        manager.set_pid_and_epoch(41, 0)
        manager.increment_sequence_number(tp, 7)

        assert _forget_producer_id(producer)

        assert not manager.has_pid()
        assert manager.sequence_number(tp) == 0
        assert not _forget_producer_id(producer), "no id to forget until the sender gets one"
        manager.set_pid_and_epoch(42, 0)  # what the sender does with the broker's answer
        await manager.wait_for_pid()
        assert (manager.producer_id, manager.producer_epoch) == (42, 0)
    finally:
        await producer.stop()


async def test_a_refused_batch_blames_its_largest_record_and_lets_the_rest_be_resent() -> None:
    import functools

    from aiokafka.errors import MessageSizeTooLargeError

    from ferryman.publisher import BatchRefused, KafkaPublisher, RecordTooLarge

    publisher = KafkaPublisher("127.0.0.1:1", client_id="unit")
    loop = asyncio.get_running_loop()
    acked = [loop.create_future() for _ in range(3)]
    for future, size in zip(acked, (10, 50_000, 20), strict=True):
        sent = loop.create_future()
        sent.set_exception(MessageSizeTooLargeError())
        publisher._settle(  # pyright: ignore[reportPrivateUsage]
            future,
            object(),  # pyright: ignore[reportArgumentType] - not the current producer
            "t",
            functools.partial(int, size),
            sent,
        )

    outcomes = await asyncio.gather(*acked, return_exceptions=True)

    assert [type(o) for o in outcomes] == [BatchRefused, RecordTooLarge, BatchRefused]
    assert all(o.retriable for o in outcomes if isinstance(o, BatchRefused))
