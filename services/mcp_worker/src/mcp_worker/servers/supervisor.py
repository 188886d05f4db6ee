"""One registered server's lifecycle: its sessions (one per tenant scope, never shared across
tenants unless the server is declared stateless), its concurrency limit, restarts with
exponential backoff behind a circuit breaker, and what health needs to know."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Literal

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman_runtime.resilience import Breaker
from ferryman_runtime.upstreams.stats import UpstreamStats
from mcp_worker.registry import ServerConfig
from mcp_worker.servers.session import NotificationKind
from mcp_worker.servers.tool_session import PrepareSession, ToolSession

logger = logging.getLogger(__name__)

State = Literal["idle", "provisioning", "starting", "running", "backoff", "failed", "stopped"]


class ServerSupervisor:
    """Sessions and lifecycle of one server.

    Args:
        name: the registry name.
        config: its registry entry.
        prepare: builds a session (provisioning, sandboxing, an API's document happen there).
        breaker: the server's circuit breaker (opens after consecutive start or call failures).
        stats: the server's passive stats (latency, error rate, in flight).
        on_list_changed: called with (server, session scope, kind) when a session reports a
            changed tool, resource or prompt list.
        on_crash: called with the server name when a session ends unexpectedly.
        restart_delays: (first, maximum) seconds of the restart backoff.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        name: str,
        config: ServerConfig,
        *,
        prepare: PrepareSession,
        breaker: Breaker,
        stats: UpstreamStats,
        on_list_changed: Callable[[str, str, NotificationKind], None],
        on_crash: Callable[[str], None],
        restart_delays: tuple[float, float] = (0.5, 30.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self.config_digest = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]
        """Names this configuration (a changed entry gets new cache keys)."""
        self._prepare = prepare
        self.breaker = breaker
        self.stats = stats
        self._on_list_changed = on_list_changed
        self._on_crash = on_crash
        self._delays = restart_delays
        self._clock = clock
        self._sessions: dict[str, ToolSession] = {}
        self._starting: dict[str, asyncio.Task[ToolSession]] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self.limit = asyncio.Semaphore(config.max_concurrency)
        self.state: State = "idle"
        self.restarts = 0
        self.failures_in_a_row = 0
        self._failed_at: float | None = None
        self.last_error: str | None = None
        self.last_success: datetime | None = None
        self.protocol_version: str | None = None
        self._stopping = False

    def scope(self, tenant: str | None) -> str:
        """The session key of a tenant: its own unless the server's sessions are shared."""
        # An API's session is per tenant always: its credentials and cache are the tenant's.
        shared = self.config.sessions == "shared" and not self.config.is_api
        return "" if shared else (tenant or "")

    def live_scope(self) -> str | None:
        """The key of a live session (the shared one first), or None when none runs."""
        if "" in self._sessions and self._sessions[""].alive:
            return ""
        return next((key for key, s in self._sessions.items() if s.alive), None)

    @property
    def session_count(self) -> int:
        """Live sessions (for stdio servers: running processes)."""
        return sum(1 for s in self._sessions.values() if s.alive)

    def backoff_remaining(self) -> float:
        """Seconds until the next start may be tried (0: now)."""
        if self._failed_at is None or self.failures_in_a_row == 0:
            return 0.0
        first, maximum = self._delays
        delay = min(first * 2 ** (self.failures_in_a_row - 1), maximum)
        return max(0.0, self._failed_at + delay - self._clock())

    async def session(self, tenant: str | None, timeout: float) -> ToolSession:
        """The tenant's live session, started if needed (after any restart backoff).

        A start runs on its own, bounded by the server's `connect_timeout`: a caller that
        gives up (its own timeout, a cancel) leaves it to finish for the next caller, and its
        impatience never counts against the server.

        Raises:
            FerrymanError: `unavailable` (cannot start, circuit open, stopping) or `timeout`.
        """
        key = self.scope(tenant)
        current = self._sessions.get(key)
        if current is not None and current.alive:
            return current
        if self._stopping:
            raise FerrymanError(
                ErrorCode.UNAVAILABLE, f"server {self.name!r} is being removed", upstream=self.name
            )
        starting = self._starting.get(key)
        if starting is None:
            wait = self.backoff_remaining()
            if wait > timeout:
                raise FerrymanError(
                    ErrorCode.UNAVAILABLE,
                    f"server {self.name!r} is restarting after a failure (next start in"
                    f" {wait:.1f} s)",
                    upstream=self.name,
                    retry_after=wait,
                )
            starting = asyncio.create_task(self._start(key), name=f"mcp-start-{self.name}")
            self._starting[key] = starting
            starting.add_done_callback(lambda task: self._started(key, task))
        try:
            return await asyncio.wait_for(asyncio.shield(starting), timeout)
        except TimeoutError:
            raise FerrymanError(
                ErrorCode.TIMEOUT,
                f"server {self.name!r} is still starting; no session within {timeout:g} s",
                upstream=self.name,
            ) from None

    def _started(self, key: str, task: asyncio.Task[ToolSession]) -> None:
        if self._starting.get(key) is task:
            del self._starting[key]
        if not task.cancelled():
            task.exception()  # retrieved: waiters got it; nobody waiting is fine too

    async def _start(self, key: str) -> ToolSession:
        wait = self.backoff_remaining()
        if wait > 0:
            self.state = "backoff"
            await asyncio.sleep(wait)  # the restart backoff itself, not synchronization
        if not self.breaker.allows():
            raise FerrymanError(
                ErrorCode.UNAVAILABLE, f"circuit open for server {self.name!r}", upstream=self.name
            )
        self.state = "starting"
        try:
            async with self.breaker.guard():
                session = await self._prepare(
                    key, lambda kind: self._on_list_changed(self.name, key, kind)
                )
                # The server's own handshake bound, not the caller's remainder: a caller
                # with little time left must not make a healthy server look broken.
                await session.open(self.config.connect_timeout)
        except FerrymanError as exc:
            self._failed(exc.message)
            raise
        if self._stopping:  # removed while it started: it must not outlive the removal
            await session.close()
            raise FerrymanError(
                ErrorCode.UNAVAILABLE, f"server {self.name!r} is being removed", upstream=self.name
            )
        self.state = "running"
        self.protocol_version = session.protocol_version
        self._sessions[key] = session
        watcher = asyncio.create_task(self._watch(key, session), name=f"mcp-watch-{self.name}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        logger.info(
            "MCP server %s started (scope %r, protocol %s)",
            self.name,
            key or "*",
            self.protocol_version,
        )
        return session

    async def _watch(self, key: str, session: ToolSession) -> None:
        await session.closed.wait()
        if self._sessions.get(key) is session:
            del self._sessions[key]
        if self._stopping or session.failure is None:
            return
        self.restarts += 1
        self._failed(f"the server's connection ended (crashed or exited): {session.why()}")
        logger.warning(
            "MCP server %s (scope %r) ended; restart %d", self.name, key or "*", self.restarts
        )
        self._on_crash(self.name)

    def _failed(self, reason: str) -> None:
        self.failures_in_a_row += 1
        self._failed_at = self._clock()
        self.last_error = reason
        self.state = "failed" if self.failures_in_a_row > 1 else "backoff"

    def succeeded(self) -> None:
        """Record a successful request (ends the restart backoff)."""
        self.failures_in_a_row = 0
        self._failed_at = None
        self.last_success = datetime.now(UTC)
        if self.state in ("backoff", "failed", "starting"):
            self.state = "running"

    @asynccontextmanager
    async def slot(self, timeout: float) -> AsyncIterator[None]:
        """Hold one of the server's concurrency slots (waiting at most `timeout` seconds).

        Raises:
            FerrymanError: `timeout` when no slot frees in time (backpressure).
        """
        try:
            await asyncio.wait_for(self.limit.acquire(), timeout)
        except TimeoutError:
            raise FerrymanError(
                ErrorCode.TIMEOUT,
                f"server {self.name!r} is at its concurrency limit"
                f" ({self.config.max_concurrency}); no slot freed in time",
                upstream=self.name,
            ) from None
        try:
            yield
        finally:
            self.limit.release()

    async def close(self) -> None:
        """Stop every session (stdio: the whole process tree)."""
        self._stopping = True
        self.state = "stopped"
        for starting in list(self._starting.values()):
            starting.cancel()  # a half-open session closes itself when cancelled
        await asyncio.gather(*self._starting.values(), return_exceptions=True)
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        for watcher in list(self._watchers):
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
