"""An event loop on virtual time, for tests whose behaviour is a duration.

`VirtualTimeLoop.time()` starts at an arbitrary value and moves only when nothing can run
until a timer is due: then it jumps straight to that timer. Sleeps, `asyncio.timeout`,
`wait_for` and every component whose clock defaults to `loop.time()` (or is given it) see
seconds pass at once, so a test can assert "waited exactly the Retry-After" or "failed
over without waiting" on a loaded machine, and a 2 s backoff costs no real time.

I/O stays real (the in-process fake servers on loopback sockets): the loop never jumps
while a socket is ready, while bytes may still be on their way (it first gives them
`SETTLE` seconds of real time), or while work runs in an executor thread.
"""

from __future__ import annotations

import asyncio
import functools
import selectors
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")

SETTLE = 0.02
"""Real seconds a quiet loop waits for in-flight loopback bytes before time jumps."""


class _JumpingSelector(selectors.DefaultSelector):
    """Polls for real; when nothing is ready and a timer is due later, moves the clock to it."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        if timeout is None or self._loop.threads_busy:
            return super().select(timeout)  # woken by I/O or by a thread finishing
        ready = super().select(min(timeout, SETTLE))
        if not ready:
            self._loop.advance(timeout)
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose `time()` is virtual (see the module docstring)."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self.threads_busy = 0
        """Executor jobs in flight: time does not jump while one may still call back."""
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        """The virtual time, in seconds."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock `seconds` forward (the selector does this when the loop is idle)."""
        self._now += seconds

    def run_in_executor(  # type: ignore[override]
        self, executor: Executor | None, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self.threads_busy += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, _: asyncio.Future[Any]) -> None:
        self.threads_busy -= 1


def run_on_virtual_time(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a fresh `VirtualTimeLoop`, then close the loop.

    Raises:
        BaseException: whatever `main` raised.
    """
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)


def on_virtual_time(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Make async test `test` a plain test that runs on its own `VirtualTimeLoop`.

    Its parameters are still pytest fixtures, but only synchronous ones: async fixtures
    live on the suite's shared loop, so the test opens what it needs itself.
    """

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        run_on_virtual_time(test(*args, **kwargs))

    return run
