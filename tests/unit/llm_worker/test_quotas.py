"""Each replica enforces its share of every quota, over a sliding window, with bounded memory."""

from __future__ import annotations

import asyncio
import math

import pytest

from ferryman_runtime.upstreams.quotas import QuotaBook, QuotaLimits


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _book(limits: dict[str, QuotaLimits], default: QuotaLimits | None = None):
    clock = FakeClock()
    book = QuotaBook(clock=clock)
    book.set_limits(limits, default)
    return book, clock


def _admit(book: QuotaBook, key: str, times: int, share: float = 1.0) -> None:
    for _ in range(times):
        assert book.try_acquire(key, share) == 0.0
        book.release(key)


def test_requests_beyond_the_window_budget_wait_until_the_oldest_leaves_the_window() -> None:
    book, clock = _book({"d": QuotaLimits(requests=3, window=60)})
    _admit(book, "d", 1)
    clock.advance(10)
    _admit(book, "d", 2)

    assert book.try_acquire("d") == pytest.approx(50.0)
    clock.advance(49.5)
    assert book.try_acquire("d") == pytest.approx(0.5)
    clock.advance(0.5)
    assert book.try_acquire("d") == 0.0
    assert book.try_acquire("d") == pytest.approx(10.0)


def test_share_scales_the_limit_of_this_replica() -> None:
    book, _ = _book({"d": QuotaLimits(requests=10, window=60)})

    _admit(book, "d", 5, share=0.5)

    assert book.try_acquire("d", 0.5) == pytest.approx(60.0)
    assert book.try_acquire("d", 1.0) == 0.0


def test_a_fractional_share_rounds_the_admitted_count_down() -> None:
    book, _ = _book({"d": QuotaLimits(requests=10, window=60)})

    _admit(book, "d", 3, share=1 / 3)

    assert book.try_acquire("d", 1 / 3) > 0


def test_share_below_one_request_or_zero_can_never_be_admitted() -> None:
    book, _ = _book(
        {
            "d": QuotaLimits(requests=10),
            "t": QuotaLimits(tokens=1000),
            "c": QuotaLimits(max_concurrent=3),
        }
    )

    assert book.try_acquire("d", 0.0) == math.inf
    assert book.try_acquire("d", 0.09) == math.inf
    assert book.try_acquire("t", 0.0) == math.inf
    assert book.try_acquire("c", 0.3) == math.inf
    assert book.usage("d")["in_flight"] == 0


def test_a_share_outside_zero_to_one_is_rejected() -> None:
    book, _ = _book({"d": QuotaLimits(requests=10)})

    with pytest.raises(ValueError, match="share"):
        book.try_acquire("d", 1.5)
    with pytest.raises(ValueError, match="share"):
        book.try_acquire("d", -0.1)


def test_tokens_charged_after_calls_block_admission_until_they_age_out() -> None:
    book, clock = _book({"d": QuotaLimits(tokens=1000, window=60)})
    assert book.try_acquire("d", 0.5) == 0.0
    book.charge("d", 300)
    book.release("d")
    clock.advance(20)
    assert book.try_acquire("d", 0.5) == 0.0
    book.charge("d", 250)
    book.release("d")

    # 550 used of a 500 share: below it once the first 300 leave the window at t+60.
    assert book.try_acquire("d", 0.5) == pytest.approx(40.0)
    assert book.try_acquire("d", 1.0) == 0.0
    book.release("d")
    clock.advance(40)
    assert book.try_acquire("d", 0.5) == 0.0
    assert book.usage("d")["tokens"] == 250


def test_tokens_exactly_at_the_share_block_admission() -> None:
    book, clock = _book({"d": QuotaLimits(tokens=1000, window=60)})
    book.charge("d", 200)
    clock.advance(5)
    book.charge("d", 100)

    assert book.try_acquire("d", 0.3) == pytest.approx(55.0)
    assert book.try_acquire("d", 0.31) == 0.0


def test_max_concurrent_admits_again_after_a_release() -> None:
    book, _ = _book({"d": QuotaLimits(max_concurrent=4)})
    assert book.try_acquire("d", 0.5) == 0.0
    assert book.try_acquire("d", 0.5) == 0.0

    wait = book.try_acquire("d", 0.5)

    assert 0 < wait < 1
    book.release("d")
    assert book.usage("d")["in_flight"] == 1
    assert book.try_acquire("d", 0.5) == 0.0


def test_release_never_drops_in_flight_below_zero() -> None:
    book, _ = _book({"d": QuotaLimits(max_concurrent=1)})

    book.release("d")
    book.release("d")

    assert book.usage("d")["in_flight"] == 0
    assert book.try_acquire("d") == 0.0
    assert book.try_acquire("d") > 0


def test_a_window_wait_outranks_the_concurrency_hint() -> None:
    book, _ = _book({"d": QuotaLimits(requests=1, max_concurrent=1, window=30)})
    assert book.try_acquire("d") == 0.0

    assert book.try_acquire("d") == pytest.approx(30.0)


def test_reloading_limits_keeps_usage_history() -> None:
    book, _ = _book({"d": QuotaLimits(requests=5)})
    _admit(book, "d", 3)

    book.set_limits({"d": QuotaLimits(requests=4)})

    _admit(book, "d", 1)
    assert book.try_acquire("d") > 0
    assert book.usage("d")["requests"] == 4


def test_the_default_applies_to_keys_not_listed() -> None:
    book, _ = _book({"vip": QuotaLimits(requests=100)}, default=QuotaLimits(requests=1))

    _admit(book, "tenant-a", 1)

    assert book.try_acquire("tenant-a") > 0
    assert book.try_acquire("tenant-b") == 0.0
    assert book.limits_for("vip") == QuotaLimits(requests=100)
    assert book.limits_for("anyone") == QuotaLimits(requests=1)


def test_unlimited_keys_are_always_admitted_and_keep_no_history() -> None:
    book, _ = _book({"free": QuotaLimits(), "d": QuotaLimits(requests=1)})

    for key in ("free", "unknown"):
        for _ in range(1000):
            assert book.try_acquire(key, 0.0) == 0.0
            book.charge(key, 10_000)
            book.release(key)

    assert book.limits_for("free") is None
    assert book.limits_for("unknown") is None
    assert book.usage("unknown")["requests"] == 0
    assert set(book.snapshot()) == {"d"}


def test_a_key_that_becomes_unlimited_drops_its_history() -> None:
    book, _ = _book({"d": QuotaLimits(requests=2)})
    _admit(book, "d", 2)

    book.set_limits({})
    book.set_limits({"d": QuotaLimits(requests=2)})

    assert book.usage("d")["requests"] == 0
    assert book.try_acquire("d") == 0.0


def test_history_is_pruned_to_the_window() -> None:
    book, clock = _book({"d": QuotaLimits(requests=1000, tokens=10**9, window=10)})
    for _ in range(500):
        _admit(book, "d", 1)
        book.charge("d", 7)
        clock.advance(0.1)

    clock.advance(10)
    assert book.try_acquire("d") == 0.0

    usage = book.usage("d")
    assert usage["requests"] == 1
    assert usage["tokens"] == 0
    history = book._history["d"]
    assert len(history.requests) == 1
    assert len(history.tokens) == 0


def test_idle_keys_are_forgotten_once_their_window_passes() -> None:
    book, clock = _book({}, default=QuotaLimits(requests=5, window=10))
    for tenant in range(1000):
        _admit(book, f"tenant-{tenant}", 1)
        clock.advance(0.1)

    assert len(book._history) < 200
    clock.advance(10)
    assert book.snapshot() == {}
    assert book._history == {}


def test_snapshot_reports_configured_and_active_limited_keys() -> None:
    book, _ = _book({"d": QuotaLimits(requests=5, window=30)}, default=QuotaLimits(tokens=100))
    assert book.try_acquire("tenant") == 0.0
    book.charge("tenant", 40)

    snapshot = book.snapshot()

    assert snapshot["d"] == {
        "requests": 0,
        "tokens": 0,
        "in_flight": 0,
        "requests_limit": 5,
        "tokens_limit": None,
        "max_concurrent": None,
        "window": 30,
    }
    assert snapshot["tenant"]["tokens"] == 40
    assert snapshot["tenant"]["in_flight"] == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"requests": 0},
        {"tokens": -1},
        {"max_concurrent": 0},
        {"requests": True},
        {"window": 0},
        {"window": math.inf},
    ],
)
def test_invalid_limits_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        QuotaLimits(**kwargs)  # pyright: ignore[reportArgumentType]


def test_unlimited_means_no_limit_of_any_kind() -> None:
    assert QuotaLimits().unlimited
    assert QuotaLimits(window=5).unlimited
    assert not QuotaLimits(max_concurrent=1).unlimited


def test_charging_negative_tokens_is_rejected() -> None:
    book, _ = _book({"d": QuotaLimits(tokens=10)})

    with pytest.raises(ValueError, match="tokens"):
        book.charge("d", -1)


def test_the_book_works_outside_a_running_loop() -> None:
    book = QuotaBook(clock=FakeClock())  # built at import/wiring time, before any loop
    book.set_limits({"d": QuotaLimits(max_concurrent=1)})

    assert book.try_acquire("d") == 0.0
    assert book.try_acquire("d") > 0
    book.release("d")  # wakes waiters: must not need a loop when nobody waits
    assert book.try_acquire("d") == 0.0


async def test_changed_wakes_every_waiter_on_release() -> None:
    book, _ = _book({"d": QuotaLimits(max_concurrent=1)})
    assert book.try_acquire("d") == 0.0
    waiters = [asyncio.create_task(book.changed(timeout=60)) for _ in range(5)]
    await asyncio.sleep(0)
    assert not any(waiter.done() for waiter in waiters)

    book.release("d")

    await asyncio.wait_for(asyncio.gather(*waiters), timeout=5)


async def test_changed_wakes_on_charge_and_reload_and_rearms_afterwards() -> None:
    book, _ = _book({"d": QuotaLimits(tokens=100)})

    waiter = asyncio.create_task(book.changed(timeout=60))
    await asyncio.sleep(0)
    book.charge("d", 5)
    await asyncio.wait_for(waiter, timeout=5)

    waiter = asyncio.create_task(book.changed(timeout=60))
    await asyncio.sleep(0)
    assert not waiter.done()
    book.set_limits({})
    await asyncio.wait_for(waiter, timeout=5)


async def test_changed_returns_after_its_timeout_without_raising() -> None:
    book = QuotaBook(clock=FakeClock())

    await asyncio.wait_for(book.changed(timeout=0.01), timeout=5)
