"""Retry-After holds: upstreams that asked not to be called before a time."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ferryman_runtime.bounded_keys import BoundedKeys


@dataclass
class _Hold:
    until: float


class Cooldowns:
    """Deployments that asked us (Retry-After) not to call them before a time.

    Holds of ad hoc deployments (direct `provider/model` requests) are kept for at most
    `max_ad_hoc` of them, expired holds dropped first (see `BoundedKeys`).

    Args:
        clock: monotonic seconds (injectable for tests).
        max_ad_hoc: most ad hoc deployments held at once.

    Raises:
        ValueError: `max_ad_hoc` is below 1.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_ad_hoc: int = 256) -> None:
        self._clock = clock
        self._holds = BoundedKeys(
            lambda _: _Hold(0.0), max_ad_hoc=max_ad_hoc, idle=lambda h: h.until <= self._clock()
        )

    def hold(self, name: str, seconds: float, group: str | None = None) -> None:
        """Do not pick `name` for `seconds` (extends, never shortens, a hold).

        Args:
            name: the deployment.
            seconds: how long to hold it.
            group: None for a configured deployment; for an ad hoc one, its group
                (e.g. `openai/*`).
        """
        until = self._clock() + seconds
        held = self._holds.get(name, group)
        held.until = max(held.until, until)

    def remaining(self, name: str) -> float:
        """Seconds left on `name`'s hold (0 when none)."""
        held = self._holds.peek(name)
        if held is None:
            return 0.0
        left = held.until - self._clock()
        if left <= 0:
            self._holds.discard(name)
            return 0.0
        return left

    def __len__(self) -> int:
        return len(self._holds)
