"""Circuit breakers and retry delays, wrapped once for every worker.

Both read only `FerrymanError.retryable`: a non-retryable error (a bad request, bad
credentials, a content filter) says nothing about the upstream's health, so it
neither counts as a breaker failure nor is retried; a cancellation counts as nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import pybreaker  # pyright: ignore[reportMissingTypeStubs]
from prometheus_client import CollectorRegistry, Gauge

from ferryman.contracts import ErrorCode, FerrymanError

_STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}


def _not_a_failure(error: BaseException) -> bool:
    # Only the upstream's retryable failures count; our own errors (e.g. Kafka) do not.
    return not isinstance(error, FerrymanError) or not error.retryable


class Breaker:
    """One upstream's circuit breaker (pybreaker, used through its `calling()` context).

    Half-open lets exactly one probe through; concurrent calls fail fast until it ends.

    Args:
        name: names the upstream in errors and metrics.
        fail_max: consecutive retryable failures that open the circuit.
        reset_timeout: seconds the circuit stays open before a probe is allowed.
        on_state: called with the new state name on every change.
    """

    def __init__(
        self,
        name: str,
        *,
        fail_max: int,
        reset_timeout: float,
        on_state: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self._on_state = on_state
        self._opened_at: float | None = None
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            exclude=[_not_a_failure],
            listeners=[_StateListener(self._state_changed)],
            name=name,
        )
        self._probe = asyncio.Lock()

    def _state_changed(self, state: str) -> None:
        self._opened_at = time.monotonic() if state == "open" else None
        if self._on_state is not None:
            self._on_state(state)

    @property
    def state(self) -> str:
        """`closed`, `open` or `half-open`."""
        return str(self._breaker.current_state)

    def allows(self) -> bool:
        """Whether a call may go through now (routing skips upstreams that are not allowed)."""
        state = self._breaker.current_state
        if state == "closed":
            return True
        if self._probe.locked():
            return False
        if state == "open":
            opened = self._opened_at
            return opened is not None and time.monotonic() - opened >= self._breaker.reset_timeout
        return True

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncGenerator[None, None]:
        """Run one call through the breaker.

        Raises:
            FerrymanError: `unavailable` (retryable) when the circuit is open, or a probe is
                already running; otherwise whatever the call raised.
        """
        closed = self._breaker.current_state == "closed"
        lock = contextlib.nullcontext() if closed else self._probe
        if not closed and self._probe.locked():
            raise self._open_error()
        async with lock:  # type: ignore[attr-defined]
            try:
                with self._breaker.calling():
                    yield
            except pybreaker.CircuitBreakerError as exc:
                cause = exc.__context__
                if isinstance(cause, FerrymanError):  # the call that tripped the circuit
                    raise cause from None
                raise self._open_error() from exc

    def _open_error(self) -> FerrymanError:
        return FerrymanError(ErrorCode.UNAVAILABLE, f"circuit open for {self.name}", retryable=True)


class _StateListener(pybreaker.CircuitBreakerListener):  # pyright: ignore[reportUntypedBaseClass]
    def __init__(self, on_state: Callable[[str], None]) -> None:
        self._on_state = on_state

    def state_change(self, cb: object, old_state: object, new_state: object) -> None:
        self._on_state(str(getattr(new_state, "name", new_state)))


class Breakers:
    """A breaker per upstream key, created on first use, with state exported as a gauge.

    Args:
        registry: where `<prefix>_circuit_state{upstream}` (0 closed, 1 half-open, 2 open) goes.
        prefix: metric name prefix.
        fail_max: see `Breaker`.
        reset_timeout: see `Breaker`.
    """

    def __init__(
        self, registry: CollectorRegistry, prefix: str, *, fail_max: int, reset_timeout: float
    ) -> None:
        self._fail_max = fail_max
        self._reset_timeout = reset_timeout
        self._breakers: dict[str, Breaker] = {}
        self._gauge = Gauge(
            f"{prefix}_circuit_state",
            "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open.",
            ["upstream"],
            registry=registry,
        )

    def get(self, key: str) -> Breaker:
        """Return the breaker of `key`."""
        breaker = self._breakers.get(key)
        if breaker is None:
            gauge = self._gauge.labels(upstream=key)
            gauge.set(0)
            breaker = Breaker(
                key,
                fail_max=self._fail_max,
                reset_timeout=self._reset_timeout,
                on_state=lambda state: gauge.set(_STATE_VALUES.get(state, 2)),
            )
            self._breakers[key] = breaker
        return breaker

    def state_of(self, key: str) -> str:
        """`key`'s state (`closed` when it has no breaker yet; none is created)."""
        breaker = self._breakers.get(key)
        return breaker.state if breaker is not None else "closed"

    def states(self) -> dict[str, str]:
        """Every known upstream's state, for `/health`."""
        return {key: breaker.state for key, breaker in sorted(self._breakers.items())}


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded attempts with exponential backoff and full jitter, honouring Retry-After."""

    max_attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0

    def delay(
        self, attempt: int, retry_after: float | None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before attempt `attempt + 1` (attempts count from 1).

        Full jitter (uniform in [0, min(max_delay, base·2^(attempt-1))]), but never less
        than the upstream's `Retry-After`.
        """
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        jittered = (rng or random).uniform(0.0, ceiling)
        return max(jittered, retry_after or 0.0)
