"""Replaying dead letters: the original record back, never a truncated copy."""

from __future__ import annotations

import pytest

from ferryman.contracts import events
from ferryman.dlq import DeadLetter, replay
from tests.fakes.publisher import RawPublisher


def _letter(*extra: tuple[str, bytes]) -> DeadLetter:
    return DeadLetter(
        topic="requests.dlq",
        partition=0,
        offset=4,
        key=b"k",
        value=b"value",
        headers=[
            ("ce_id", b"r1"),
            (events.DLQ_ORIGINAL_TOPIC, b"requests"),
            (events.DLQ_REASON, b"handler"),
            *extra,
        ],
    )


async def test_a_dead_letter_is_replayed_with_its_original_headers_and_a_replay_mark() -> None:
    publisher = RawPublisher()

    assert await replay(publisher, _letter()) == "requests"  # type: ignore[arg-type]

    [(topic, key, value, headers)] = publisher.sent
    assert (topic, key, value) == ("requests", b"k", b"value")
    assert headers == [("ce_id", b"r1"), (events.DLQ_REPLAY_OF, b"requests.dlq/0/4")]


async def test_a_truncated_dead_letter_is_refused() -> None:
    publisher = RawPublisher()

    with pytest.raises(ValueError, match="only part of the original value"):
        await replay(publisher, _letter((events.DLQ_TRUNCATED, b"3000000")))  # type: ignore[arg-type]
    assert publisher.sent == []
