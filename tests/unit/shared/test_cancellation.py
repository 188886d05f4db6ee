"""The cancel board: cancels by request key, early cancels, and cancels that outlast a run."""

from __future__ import annotations

import asyncio

import pytest

from ferryman_runtime.cancellation import CancelBoard, CancelledByRequest


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_cancel_stops_the_running_request_and_names_its_reason() -> None:
    board = CancelBoard(window=60)
    started = asyncio.Event()

    async def work() -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    running = asyncio.create_task(board.run(("/app", "r1"), work()))
    await started.wait()
    assert board.requested(("/app", "r1")) is False

    assert board.cancel(("/app", "r1"), "user stopped") is True

    with pytest.raises(CancelledByRequest, match="user stopped"):
        await running
    assert board.running() == 0


async def test_a_cancelled_request_fails_again_when_it_runs_again_within_the_window() -> None:
    clock = _Clock()
    board = CancelBoard(window=60, clock=clock)
    board.cancel(("/app", "r2"), "first")
    calls: list[str] = []

    async def work() -> str:
        calls.append("ran")
        return "ok"

    for _ in range(2):  # a rerun after a failed publish, or a redelivery
        with pytest.raises(CancelledByRequest):
            await board.run(("/app", "r2"), work())
    clock.now += 61
    assert await board.run(("/app", "r2"), work()) == "ok"
    assert calls == ["ran"]


async def test_a_worker_stopping_is_no_cancel_event() -> None:
    board = CancelBoard(window=60)
    started = asyncio.Event()
    seen: list[bool] = []

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append(board.requested(("/app", "r3")))
            raise

    running = asyncio.create_task(board.run(("/app", "r3"), work()))
    await started.wait()
    running.cancel()  # what a shutdown does

    with pytest.raises(asyncio.CancelledError):
        await running
    assert seen == [False]
