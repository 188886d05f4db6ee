"""Sliding-window budgets: requests and tokens per window, and concurrent calls.

Used for outbound limits per deployment and inbound limits per tenant. Replicas share
no storage: each enforces only its `share` of every limit (its assigned partitions over
the request topic's partitions), so the shares of all replicas add up to the whole limit.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

_EPSILON = 1e-9
"""Tolerance for `limit * share`, which is rarely an exact float."""

_CONCURRENCY_HINT = 0.25
"""Seconds to wait when only concurrency blocks; callers also wake on `changed()`."""

_SWEEP_FLOOR = 64
"""Histories kept before the first sweep of idle keys."""

REPORTED_UNNAMED = 16
"""Keys under the default limits that `QuotaBook.snapshot()` reports at most."""


@dataclass(frozen=True)
class QuotaLimits:
    """The limits of one key; `None` means no limit of that kind.

    Raises:
        ValueError: a limit is not a positive integer, or `window` is not positive and finite.
    """

    requests: int | None = None
    """Requests admitted per window."""
    tokens: int | None = None
    """Tokens per window, from reported usage (charged after each call)."""
    max_concurrent: int | None = None
    """Calls in flight at once."""
    window: float = 60.0
    """Seconds the request and token budgets cover."""

    def __post_init__(self) -> None:
        for name in ("requests", "tokens", "max_concurrent"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value <= 0
            ):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (0 < self.window < math.inf):
            raise ValueError(f"window must be positive and finite, got {self.window!r}")

    @property
    def unlimited(self) -> bool:
        """Whether no limit of any kind is set."""
        return self.requests is None and self.tokens is None and self.max_concurrent is None

    @property
    def windowed(self) -> bool:
        """Whether a request or token budget needs history."""
        return self.requests is not None or self.tokens is not None


@dataclass
class _History:
    requests: deque[float] = field(default_factory=deque[float])
    tokens: deque[tuple[float, int]] = field(default_factory=deque[tuple[float, int]])
    token_sum: int = 0

    def prune(self, now: float, window: float) -> None:
        horizon = now - window + _EPSILON
        requests = self.requests
        while requests and requests[0] <= horizon:
            requests.popleft()
        tokens = self.tokens
        while tokens and tokens[0][0] <= horizon:
            self.token_sum -= tokens.popleft()[1]

    def empty(self) -> bool:
        return not self.requests and not self.tokens


class QuotaBook:
    """Budgets per key (a deployment or a tenant) on this replica.

    Only keys with request or token limits keep history, pruned to the window on each
    access, so memory follows the keys active within a window.

    Args:
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._limits: dict[str, QuotaLimits] = {}
        self._default: QuotaLimits | None = None
        self._history: dict[str, _History] = {}
        self._in_flight: dict[str, int] = {}
        self._sweep_at = _SWEEP_FLOOR
        # Created on first wait: an Event made outside a running loop must not be awaited.
        self._event: asyncio.Event | None = None

    def set_limits(
        self, limits: Mapping[str, QuotaLimits], default: QuotaLimits | None = None
    ) -> None:
        """Replace the configuration (hot reload).

        Usage history of keys is kept, so a reload never resets budgets; keys left
        without request or token limits drop their history.

        Args:
            limits: limits per key.
            default: limits of keys not in `limits` (e.g. tenant "*"); None means unlimited.
        """
        self._limits = dict(limits)
        self._default = default
        for key in list(self._history):
            config = self.limits_for(key)
            if config is None or not config.windowed:
                del self._history[key]
        self._notify()

    def limits_for(self, key: str) -> QuotaLimits | None:
        """The limits of `key`, or None when it is unlimited."""
        config = self._limits.get(key, self._default)
        if config is None or config.unlimited:
            return None
        return config

    def try_acquire(self, key: str, share: float = 1.0) -> float:
        """Admit one request for `key` now if this replica's share of its limits allows.

        Args:
            key: the deployment or tenant.
            share: this replica's fraction of every limit, in [0, 1].

        Returns:
            0.0 when admitted: the request is recorded and counted in flight, and the
            caller must call `release(key)` exactly once. Otherwise the seconds after
            which it may be admitted: exact when a window budget blocks, a short hint
            when only concurrency does (wait on `changed()` too). `math.inf` when it
            can never be admitted at this share (the share of a limit is below one).

        Raises:
            ValueError: `share` is outside [0, 1].
        """
        if not (0.0 <= share <= 1.0):
            raise ValueError(f"share must be within [0, 1], got {share!r}")
        config = self.limits_for(key)
        if config is not None:
            wait = self._wait(key, config, share)
            if wait > 0:
                return wait
            if config.windowed:
                self._history_of(key).requests.append(self._clock())
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        return 0.0

    def release(self, key: str) -> None:
        """End one admitted call of `key` and wake waiters (safe for unlimited keys)."""
        in_flight = self._in_flight.pop(key, 0) - 1
        if in_flight > 0:
            self._in_flight[key] = in_flight
        self._notify()

    def charge(self, key: str, tokens: int) -> None:
        """Record `tokens` used by `key` now and wake waiters (no-op for unlimited keys).

        Raises:
            ValueError: `tokens` is negative.
        """
        if tokens < 0:
            raise ValueError(f"tokens must not be negative, got {tokens!r}")
        config = self.limits_for(key)
        if config is None or not config.windowed or tokens == 0:
            return
        now = self._clock()
        history = self._history_of(key)
        history.prune(now, config.window)
        history.tokens.append((now, tokens))
        history.token_sum += tokens
        self._notify()

    async def changed(self, timeout: float) -> None:
        """Return when any release, charge or reload happens, or after `timeout` seconds."""
        event = self._event
        if event is None:
            event = self._event = asyncio.Event()
        try:
            async with asyncio.timeout(None if math.isinf(timeout) else timeout):
                await event.wait()
        except TimeoutError:
            pass

    def usage(self, key: str) -> dict[str, float | int | None]:
        """Requests and tokens of `key` in its current window, calls in flight, and its limits."""
        config = self.limits_for(key)
        history = self._history.get(key)
        if history is not None and config is not None:
            history.prune(self._clock(), config.window)
        return {
            "requests": len(history.requests) if history else 0,
            "tokens": history.token_sum if history else 0,
            "in_flight": self._in_flight.get(key, 0),
            "requests_limit": config.requests if config else None,
            "tokens_limit": config.tokens if config else None,
            "max_concurrent": config.max_concurrent if config else None,
            "window": config.window if config else None,
        }

    def snapshot(self) -> dict[str, dict[str, float | int | None]]:
        """`usage()` of every configured limited key, and of the busiest active keys under
        the default limits (at most `REPORTED_UNNAMED`: producers name those), for health."""
        self._sweep()
        named = {key: self.usage(key) for key in self._limits if self.limits_for(key)}
        unnamed = [
            (key, self.usage(key))
            for key in set(self._history) | set(self._in_flight)
            if key not in self._limits and self.limits_for(key)
        ]
        unnamed.sort(key=lambda item: (-_load(item[1]), item[0]))
        named.update(unnamed[:REPORTED_UNNAMED])
        return dict(sorted(named.items()))

    def _wait(self, key: str, config: QuotaLimits, share: float) -> float:
        waits = [0.0]
        if config.windowed:
            now = self._clock()
            history = self._history_of(key)
            history.prune(now, config.window)
            if config.requests is not None:
                waits.append(_requests_wait(history, config.requests, share, config.window, now))
            if config.tokens is not None:
                waits.append(_tokens_wait(history, config.tokens, share, config.window, now))
        if config.max_concurrent is not None:
            allowed = math.floor(config.max_concurrent * share + _EPSILON)
            if allowed < 1:
                return math.inf
            if self._in_flight.get(key, 0) >= allowed:
                waits.append(_CONCURRENCY_HINT)
        return max(waits)

    def _history_of(self, key: str) -> _History:
        history = self._history.get(key)
        if history is None:
            if len(self._history) >= self._sweep_at:
                self._sweep()
                self._sweep_at = max(_SWEEP_FLOOR, 2 * len(self._history))
            history = self._history[key] = _History()
        return history

    def _sweep(self) -> None:
        now = self._clock()
        for key, history in list(self._history.items()):
            config = self.limits_for(key)
            if config is not None:
                history.prune(now, config.window)
            if config is None or history.empty():
                del self._history[key]

    def _notify(self) -> None:
        # Setting and dropping the event wakes every current waiter at once;
        # later waiters get a fresh one.
        if self._event is not None:
            self._event.set()
            self._event = None


def _load(usage: Mapping[str, float | int | None]) -> float:
    return float(usage["requests"] or 0) + float(usage["in_flight"] or 0)


def _requests_wait(history: _History, limit: int, share: float, window: float, now: float) -> float:
    allowed = math.floor(limit * share + _EPSILON)
    if allowed < 1:
        return math.inf
    excess = len(history.requests) - allowed
    if excess < 0:
        return 0.0
    return history.requests[excess] + window - now


def _tokens_wait(history: _History, limit: int, share: float, window: float, now: float) -> float:
    budget = limit * share - _EPSILON
    if budget <= 0:
        return math.inf
    remaining = history.token_sum
    wait = 0.0
    for at, tokens in history.tokens:
        if remaining < budget:
            break
        remaining -= tokens
        wait = at + window - now
    return wait
