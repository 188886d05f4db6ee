"""Rate limits of tool calls per server and per tenant on a server, from the registry.

Held across replicas the way the LLM worker holds its quotas: no shared store, each replica
enforces its share of every limit (its assigned partitions of the request topic over all of
them), so the shares add up to the whole limit. A call over a limit waits for a slot while
its time allows, and fails `rate_limited` (with the wait as `retry_after`) when it does not.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman_runtime.upstreams.quotas import QuotaBook
from mcp_worker.registry import Registry


class RateLimits:
    """The limits of every server and of each tenant on it.

    Args:
        share: this replica's share of every limit, in [0, 1].
        on_wait: called with the server of each call that has to wait.
        on_refused: called with the scope (`server` or `tenant`) and the tenant of each call
            failed `rate_limited`.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        share: Callable[[], float] = lambda: 1.0,
        *,
        on_wait: Callable[[str], None] = lambda _server: None,
        on_refused: Callable[[str, str | None], None] = lambda _scope, _tenant: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._share = share
        self._on_wait = on_wait
        self._on_refused = on_refused
        self._clock = clock
        self._servers = QuotaBook(clock)
        self._tenants: dict[str, QuotaBook] = {}
        self.waits = 0
        """Calls that had to wait for a slot."""

    def configure(self, registry: Registry) -> None:
        """Take the registry's limits (usage so far is kept across reloads)."""
        self._servers.set_limits(
            {n: c.rate_limit.limits() for n, c in registry.servers.items() if c.rate_limit}
        )
        for name, config in registry.servers.items():
            book = self._tenants.setdefault(name, QuotaBook(self._clock))
            limit = config.tenant_rate_limit
            book.set_limits({}, limit.limits() if limit is not None else None)
        for name in set(self._tenants) - set(registry.servers):
            del self._tenants[name]

    @asynccontextmanager
    async def admitted(
        self, server: str, tenant: str | None, timeout: float
    ) -> AsyncIterator[None]:
        """Hold a slot of the server's and the tenant's limits for one call.

        Raises:
            FerrymanError: `rate_limited` when no slot frees within `timeout` seconds.
        """
        books = [(self._servers, server, f"server {server!r}", "server")]
        tenant_book = self._tenants.get(server)
        if tenant_book is not None:
            what = f"tenant {tenant or ''!r} on {server!r}"
            books.append((tenant_book, tenant or "", what, "tenant"))
        deadline = self._clock() + timeout
        held: list[tuple[QuotaBook, str]] = []
        try:
            for book, key, what, scope in books:
                try:
                    await self._acquire(book, key, what, deadline, server)
                except FerrymanError:
                    self._on_refused(scope, tenant)
                    raise
                held.append((book, key))
            yield
        finally:
            for book, key in held:
                book.release(key)

    async def _acquire(
        self, book: QuotaBook, key: str, what: str, deadline: float, server: str
    ) -> None:
        waited = False
        while True:
            wait = book.try_acquire(key, self._share())
            if wait == 0:
                return
            if not waited:
                waited = True
                self.waits += 1
                self._on_wait(server)
            left = deadline - self._clock()
            if math.isinf(wait) or wait > left:
                when = "never at this replica's share" if math.isinf(wait) else f"in {wait:.1f} s"
                raise FerrymanError(
                    ErrorCode.RATE_LIMITED,
                    f"{what} is over its rate limit (a slot frees {when})",
                    retryable=True,
                    retry_after=None if math.isinf(wait) else wait,
                )
            await book.changed(min(wait, left))
