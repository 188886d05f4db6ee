"""Out-of-order offset bookkeeping and the duplicate-request memory."""

from __future__ import annotations

import pytest

from ferryman_runtime.dedupe import RecentRequests
from ferryman_runtime.offsets import PartitionOffsets


def _offsets(*added: int) -> PartitionOffsets:
    offsets = PartitionOffsets()
    for offset in added:
        offsets.add(offset)
    return offsets


def test_nothing_is_committable_before_any_record_finishes() -> None:
    offsets = _offsets(10, 11, 12)

    assert offsets.committable is None
    assert offsets.needs_commit() is False
    assert offsets.in_flight == 3


def test_out_of_order_finishes_commit_only_up_to_the_lowest_unfinished_offset() -> None:
    offsets = _offsets(10, 11, 12)

    assert offsets.finish(12) is False
    assert offsets.committable is None
    assert offsets.in_flight == 2

    assert offsets.finish(10) is True
    assert offsets.committable == 11
    assert offsets.in_flight == 1

    assert offsets.finish(11) is True
    assert offsets.committable == 13
    assert offsets.in_flight == 0


def test_gaps_between_offsets_do_not_block_the_commit() -> None:
    offsets = _offsets(5, 9)

    offsets.finish(9)
    offsets.finish(5)

    assert offsets.committable == 10


def test_seen_is_true_only_for_offsets_already_handed_out() -> None:
    offsets = PartitionOffsets()
    assert offsets.seen(0) is False

    offsets.add(5)
    offsets.add(9)

    assert offsets.seen(5) is True
    assert offsets.seen(7) is True
    assert offsets.seen(9) is True
    assert offsets.seen(10) is False
    assert offsets.next_fetch == 10


@pytest.mark.parametrize("offset", [3, 4])
def test_adding_an_offset_not_above_the_last_one_raises(offset: int) -> None:
    offsets = _offsets(4)

    with pytest.raises(ValueError, match=f"offset {offset} added after 4"):
        offsets.add(offset)


def test_needs_commit_until_the_committable_offset_is_recorded_as_committed() -> None:
    offsets = _offsets(0, 1)
    offsets.finish(0)
    assert offsets.needs_commit() is True

    offsets.committed = offsets.committable
    assert offsets.needs_commit() is False

    offsets.finish(1)
    assert offsets.committable == 2
    assert offsets.needs_commit() is True


class FakeClock:
    """Monotonic seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _recent(window: float = 60.0, max_entries: int = 100) -> tuple[RecentRequests, FakeClock]:
    clock = FakeClock()
    return RecentRequests(window=window, max_entries=max_entries, clock=clock), clock


def test_a_request_in_flight_is_rejected_as_a_duplicate() -> None:
    recent, _ = _recent()

    assert recent.try_begin("/src", "1") is True
    assert recent.try_begin("/src", "1") is False


def test_the_same_id_from_another_source_is_not_a_duplicate() -> None:
    recent, _ = _recent()
    recent.try_begin("/a", "1")

    assert recent.try_begin("/b", "1") is True


def test_a_finished_request_is_rejected_within_the_window() -> None:
    recent, clock = _recent(window=60.0)
    recent.try_begin("/src", "1")
    recent.finish("/src", "1")

    clock.now += 60.0

    assert recent.try_begin("/src", "1") is False


def test_a_finished_request_is_accepted_again_after_the_window() -> None:
    recent, clock = _recent(window=60.0)
    recent.try_begin("/src", "1")
    recent.finish("/src", "1")

    clock.now += 60.001

    assert recent.try_begin("/src", "1") is True


def test_abandon_releases_the_claim_for_redelivery() -> None:
    recent, _ = _recent()
    recent.try_begin("/src", "1")

    recent.abandon("/src", "1")

    assert recent.try_begin("/src", "1") is True


def test_the_oldest_finished_keys_are_forgotten_beyond_max_entries() -> None:
    recent, clock = _recent(window=3600.0, max_entries=2)
    for event_id in ("1", "2", "3"):
        recent.try_begin("/src", event_id)
        recent.finish("/src", event_id)
        clock.now += 1.0

    assert recent.try_begin("/src", "2") is False
    assert recent.try_begin("/src", "3") is False
    assert recent.try_begin("/src", "1") is True


def test_refinishing_a_key_makes_it_the_newest() -> None:
    recent, clock = _recent(window=3600.0, max_entries=2)
    for event_id in ("1", "2"):
        recent.try_begin("/src", event_id)
        recent.finish("/src", event_id)
        clock.now += 1.0
    recent.finish("/src", "1")
    recent.finish("/src", "3")

    assert recent.try_begin("/src", "1") is False
    assert recent.try_begin("/src", "2") is True
