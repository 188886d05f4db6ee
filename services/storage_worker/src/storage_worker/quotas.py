"""Request quotas per tenant, from the policy's `rate_limit`: held across replicas the way
every Ferryman quota is (each replica enforces its share of the limit: its assigned request
partitions over all of them), with the kit's `QuotaBook`."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman_runtime.upstreams.quotas import QuotaBook, QuotaLimits
from storage_worker.policy import Policy, TenantSpace


class TenantQuotas:
    """One budget per tenant, under its pattern's limits.

    Args:
        share: this replica's share of every limit, in [0, 1].
        clock: monotonic seconds (injectable for tests).
        on_refused: called with the tenant of every request refused `rate_limited`.
    """

    def __init__(
        self,
        share: Callable[[], float] = lambda: 1.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        on_refused: Callable[[str], None] = lambda _tenant: None,
    ) -> None:
        self._share = share
        self._clock = clock
        self._on_refused = on_refused
        self._books: dict[str, QuotaBook] = {}
        self.refused = 0

    def configure(self, policy: Policy) -> None:
        """Take the policy's limits (usage so far is kept for patterns that stay)."""
        for pattern, rule in policy.tenants.items():
            book = self._books.setdefault(pattern, QuotaBook(self._clock))
            limit = rule.rate_limit
            default = (
                QuotaLimits(
                    requests=limit.requests,
                    max_concurrent=limit.max_concurrent,
                    window=limit.window,
                )
                if limit is not None
                else None
            )
            book.set_limits({}, default)
        for pattern in set(self._books) - set(policy.tenants):
            del self._books[pattern]

    @asynccontextmanager
    async def admitted(self, space: TenantSpace) -> AsyncIterator[None]:
        """Hold one request of the tenant's budget.

        Raises:
            FerrymanError: `rate_limited` (retryable, with `retry_after`) over the budget.
        """
        book = self._books.get(space.pattern)
        if book is None:
            yield
            return
        wait = book.try_acquire(space.tenant, self._share())
        if wait > 0:
            self.refused += 1
            self._on_refused(space.tenant)
            raise FerrymanError(
                ErrorCode.RATE_LIMITED,
                f"tenant {space.tenant!r} is over its request quota"
                + ("" if math.isinf(wait) else f" (a request frees in {wait:.1f} s)"),
                retryable=True,
                retry_after=None if math.isinf(wait) else wait,
            )
        try:
            yield
        finally:
            book.release(space.tenant)
