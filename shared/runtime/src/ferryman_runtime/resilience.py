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
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass

import pybreaker  # pyright: ignore[reportMissingTypeStubs]
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman_runtime.bounded_keys import BoundedKeys

_STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}

REPORTED_AD_HOC = 16
"""Ad hoc circuits that are not closed listed by `Breakers.states()` at most."""


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
        clock: monotonic seconds `reset_timeout` is measured on (injectable for tests).
    """

    def __init__(
        self,
        name: str,
        *,
        fail_max: int,
        reset_timeout: float,
        on_state: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._on_state = on_state
        self._clock = clock
        self._opened_at: float | None = None
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            exclude=[_not_a_failure],
            listeners=[_StateListener(self._state_changed)],
            name=name,
        )
        self._probe = asyncio.Lock()
        self._calls = 0

    def _state_changed(self, state: str) -> None:
        self._opened_at = self._clock() if state == "open" else None
        if self._on_state is not None:
            self._on_state(state)

    @property
    def state(self) -> str:
        """`closed`, `open` or `half-open`."""
        return str(self._breaker.current_state)

    @property
    def idle(self) -> bool:
        """Closed, with no failure counted and no call in flight: a new breaker is the same."""
        return (
            self._calls == 0
            and self._breaker.current_state == "closed"
            and self._breaker.fail_counter == 0
        )

    def allows(self) -> bool:
        """Whether a call may go through now (routing skips upstreams that are not allowed)."""
        state = self._breaker.current_state
        if state == "closed":
            return True
        if self._probe.locked():
            return False
        if state == "open":
            return self._reset_elapsed()
        return True

    def _reset_elapsed(self) -> bool:
        opened = self._opened_at
        return opened is not None and self._clock() - opened >= self._breaker.reset_timeout

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
            if self._breaker.current_state == "open" and self._reset_elapsed():
                self._breaker.half_open()  # on our clock: pybreaker's own is the wall clock
            self._calls += 1
            try:
                with self._breaker.calling():
                    yield
            except pybreaker.CircuitBreakerError as exc:
                cause = exc.__context__
                if isinstance(cause, FerrymanError):  # the call that tripped the circuit
                    raise cause from None
                raise self._open_error() from exc
            finally:
                self._calls -= 1

    def _open_error(self) -> FerrymanError:
        return FerrymanError(ErrorCode.UNAVAILABLE, f"circuit open for {self.name}", retryable=True)


class _StateListener(pybreaker.CircuitBreakerListener):  # pyright: ignore[reportUntypedBaseClass]
    def __init__(self, on_state: Callable[[str], None]) -> None:
        self._on_state = on_state

    def state_change(self, cb: object, old_state: object, new_state: object) -> None:
        self._on_state(str(getattr(new_state, "name", new_state)))


class Breakers:
    """A breaker per upstream key, created on first use, with its state exported as a gauge.

    Listed keys (configured upstreams) keep a breaker and a gauge series each, for good.
    Ad hoc keys (upstreams a producer names, e.g. a model requested directly) get a breaker
    each too, so one broken model does not open its whole provider, but at most
    `max_ad_hoc` of them are kept and they share their group's gauge series, which shows
    the group's worst state. A full map forgets idle breakers first (closed, no failure
    counted, no call in flight: a new one would behave the same); only when none is idle
    does it forget the least recently used whatever its state: with more broken models
    than the bound, bounded memory comes before remembering every open circuit.

    Args:
        registry: where `ferryman_upstream_circuit_state{upstream}` (0 closed, 1 half-open,
            2 open) goes.
        fail_max: see `Breaker`.
        reset_timeout: see `Breaker`.
        max_ad_hoc: most ad hoc breakers kept at once.
        clock: see `Breaker`.

    Raises:
        ValueError: `max_ad_hoc` is below 1.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        fail_max: int,
        reset_timeout: float,
        max_ad_hoc: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fail_max = fail_max
        self._reset_timeout = reset_timeout
        self._clock = clock
        self._breakers = BoundedKeys(self._new, max_ad_hoc=max_ad_hoc, idle=lambda b: b.idle)
        self._groups: set[str] = set()
        registry.register(_CircuitGauge(self))

    def _new(self, key: str) -> Breaker:
        return Breaker(
            key, fail_max=self._fail_max, reset_timeout=self._reset_timeout, clock=self._clock
        )

    def get(self, key: str, group: str | None = None) -> Breaker:
        """Return the breaker of `key`.

        Args:
            key: the upstream.
            group: None for a listed (configured) upstream; otherwise the few-valued name
                that stands for ad hoc upstream `key` in the gauge (e.g. `openai/*`).
        """
        if group is not None:
            self._groups.add(group)
        return self._breakers.get(key, group)

    def allows(self, key: str) -> bool:
        """Whether a call to `key` may go through now (no breaker is created)."""
        breaker = self._breakers.peek(key)
        return breaker is None or breaker.allows()

    def state_of(self, key: str) -> str:
        """`key`'s state (`closed` when it has no breaker yet; none is created). A group
        (`openai/*`) has its ad hoc upstreams' worst state, as its gauge series shows."""
        breaker = self._breakers.peek(key)
        if breaker is not None:
            return breaker.state
        if key in self._groups:
            worst = max(
                (b.state for _, group, b in self._breakers.ad_hoc() if group == key),
                key=lambda state: _STATE_VALUES.get(state, 2),
                default="closed",
            )
            return worst
        return "closed"

    def states(self) -> dict[str, str]:
        """For `/health`: every listed upstream's state, and the most recently used ad hoc
        upstreams whose circuit is not closed (at most `REPORTED_AD_HOC` of them)."""
        states = {key: breaker.state for key, breaker in self._breakers.listed()}
        reported = 0
        for key, _, breaker in self._breakers.ad_hoc():
            if reported == REPORTED_AD_HOC:
                break
            state = breaker.state
            if state != "closed":
                states[key] = state
                reported += 1
        return dict(sorted(states.items()))

    def series(self) -> dict[str, int]:
        """The gauge's values: listed upstreams by key, ad hoc ones by group (worst state)."""
        values = dict.fromkeys(sorted(self._groups), 0)
        for key, breaker in self._breakers.listed():
            values[key] = max(values.get(key, 0), _STATE_VALUES.get(breaker.state, 2))
        for _, group, breaker in self._breakers.ad_hoc():
            values[group] = max(values[group], _STATE_VALUES.get(breaker.state, 2))
        return values

    def __len__(self) -> int:
        return len(self._breakers)


class _CircuitGauge(Collector):
    """Reads `Breakers.series()` at every scrape, so an ad hoc breaker leaves no series."""

    def __init__(self, breakers: Breakers) -> None:
        self._breakers = breakers

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "ferryman_upstream_circuit_state",
            "Circuit breaker state per upstream (configured upstreams by name, upstreams"
            " named by producers by group, at their worst): 0 closed, 1 half-open, 2 open.",
            labels=["upstream"],
        )

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for upstream, value in self._breakers.series().items():
            family.add_metric([upstream], value)
        return [family]


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
