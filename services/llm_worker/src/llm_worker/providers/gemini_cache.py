"""The lifecycle of Gemini cached contents (explicit context caching), one registry per client.

- **Create on first use**, once for concurrent requests with the same prefix (they await one
  task). Skipped without a call when the prefix is estimated below the model's minimum, or
  Gemini refused the same prefix as too small within the last ttl.
- **Reuse by digest** while the entry outlives the call's margin (the larger of 60 s and
  the call's first-token timeout), so no call starts on a cached content about to die.
- **Refresh** (PATCH ttl) in the background when a used entry has less than half its ttl
  left; an entry used inside its margin is refreshed before the call.
- **Recreate** an entry that expired, and (through `drop`) one the provider says is gone.
- **Delete** entries idle for `idle` seconds (a sweeper started lazily), the least recently
  used above `max_entries`, and every entry at `aclose()` (within `close_budget` seconds).
- **Storage cost**: each entry accrues tokens times seconds alive; on refresh, delete, eviction
  and observed expiry the accrued token-hours go out as a `prompt_cache_storage` usage
  event, for the tenant and request that created it.

Cached contents are a `v1beta` resource: every cache call, and every call using one, is
sent with `http_options` naming `v1beta` when the client is pinned to `v1` (the client's
other calls stay on `v1`).

Failures of cache calls never fail a request: the call is made uncached, and the failure is
counted (`GeminiCacheStats.operations`, outcome = the error code). Nor does a slow one: a
call waits for a create or refresh at most `wait_budget` seconds (a quarter of its
first-token timeout at most), then goes uncached while the create goes on for later calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from google.genai import caches as genai_caches
from google.genai import types

from ferryman.contracts.usage import UsageEvent
from llm_worker.chat.accounting import SERVICE
from llm_worker.metrics import GeminiCacheStats
from llm_worker.providers.call_context import CallContext
from llm_worker.providers.gemini_cache_model import CachedPrefix, GeminiCacheSettings, Lease
from llm_worker.providers.gemini_errors import (
    GONE_STATUSES,
    cache_outcome,
    error_message,
    error_status,
)
from llm_worker.providers.gemini_prefix import CachePrefix, min_cache_tokens
from llm_worker.providers.gemini_request import PROVIDER

log = logging.getLogger(__name__)

CACHE_API_VERSION = "v1beta"
"""The API version that has `cachedContents` (and `cachedContent` on generate calls)."""

STORAGE_OPERATION = "prompt_cache_storage"
"""`UsageEvent.operation` of storage cost events."""

_TOO_SMALL = re.compile(r"too small", re.IGNORECASE)
_MAX_FIELD = 256


class GeminiContextCache:
    """The registry of one client's cached contents.

    Args:
        caches: the client's `client.aio.caches`.
        settings: ttl, bounds and timings.
        http_options: per-call options of cache calls (`v1beta`), None for the client's.
        clock: seconds, monotonic (default: the event loop's).
    """

    def __init__(
        self,
        caches: genai_caches.AsyncCaches,
        *,
        settings: GeminiCacheSettings,
        http_options: types.HttpOptions | None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._caches = caches
        self._settings = settings
        self.http_options = http_options
        self._clock = clock
        self._entries: OrderedDict[str, CachedPrefix] = OrderedDict()
        self._creating: dict[str, asyncio.Task[CachedPrefix | None]] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._too_small: dict[str, float] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._operations: Counter[tuple[str, str]] = Counter()

    def stats(self) -> GeminiCacheStats:
        """Entries alive and operation counts, for the metrics collector."""
        return GeminiCacheStats(len(self._entries), dict(self._operations))

    def names(self) -> list[str]:
        """The names of the cached contents alive now, least recently used first."""
        return [entry.name for entry in self._entries.values()]

    async def acquire(self, prefix: CachePrefix, context: CallContext | None) -> Lease | None:
        """A cached content holding `prefix` that outlives the call's margin, created or
        refreshed as needed; None when the call should go uncached (also when the create or
        refresh takes longer than the call's wait budget: it goes on for later calls)."""
        now = self._now()
        margin = max(self._settings.min_margin, (context and context.first_token_timeout) or 0)
        entry = self._entries.get(prefix.digest)
        if entry is not None and entry.expire_at - now <= margin and entry.expire_at > now:
            try:  # used inside its margin: extend it before the call
                await asyncio.wait_for(self._refresh(entry), self._wait_budget(context))
            except TimeoutError:
                log.warning("gemini cache: update is slow; calling uncached")
                return None
        entry = self._entries.get(prefix.digest)
        operation = "create"
        if entry is not None:
            if entry.expire_at - now > margin:
                self._use(entry, now, self._ttl(prefix))
                return Lease(entry.digest, entry.name, None)
            self._expired(entry, now)
            operation = "recreate"
        return await self._create_once(prefix, context, operation)

    def drop(self, lease: Lease) -> None:
        """Forget `lease`'s cached content: the provider said it is gone."""
        entry = self._entries.get(lease.digest)
        if entry is not None and entry.name == lease.name:
            self._expired(entry, self._now())

    async def recreate(self, prefix: CachePrefix, context: CallContext | None) -> Lease | None:
        """A new cached content for `prefix`, after `drop` (None: go uncached)."""
        self._entries.pop(prefix.digest, None)
        return await self._create_once(prefix, context, "recreate")

    async def sweep(self) -> None:
        """Forget expired entries and delete idle ones (the sweeper's round)."""
        now = self._now()
        idle = [e for e in self._entries.values() if now - e.last_used >= self._settings.idle]
        for entry in list(self._entries.values()):
            if entry.expire_at <= now:
                self._expired(entry, now)
        await asyncio.gather(*(self._delete(e) for e in idle if e.expire_at > now))

    async def drain(self) -> None:
        """Wait for the creates, refreshes and deletes started so far."""
        while pending := [
            t
            for t in (*self._background, *self._creating.values(), *self._refreshing.values())
            if not t.done()
        ]:
            await asyncio.gather(*pending, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop the sweeper and delete every entry, within `close_budget` seconds."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for task in [*self._creating.values(), *self._refreshing.values()]:
            task.cancel()
        entries = list(self._entries.values())
        try:
            async with asyncio.timeout(self._settings.close_budget):
                await asyncio.gather(*(self._delete(e) for e in entries), self.drain())
        except TimeoutError:
            log.warning("gemini cache: %d cached contents left to expire", len(self._entries))
        for entry in list(self._entries.values()):  # not deleted: billed until they expire
            self._account(entry, entry.expire_at)
            self._entries.pop(entry.digest, None)

    # --- create --------------------------------------------------------------------------

    async def _create_once(
        self, prefix: CachePrefix, context: CallContext | None, operation: str
    ) -> Lease | None:
        now = self._now()
        if self._too_small.get(prefix.digest, now) > now:
            return None
        minimum = (context and context.min_cache_tokens) or min_cache_tokens(
            prefix.model, self._settings.min_tokens
        )
        if prefix.estimated_tokens < minimum:
            return None
        task = self._creating.get(prefix.digest)
        mine = task is None
        if task is None:
            task = asyncio.create_task(self._create(prefix, context, operation))
            self._creating[prefix.digest] = task
            task.add_done_callback(lambda done: self._creating_done(prefix.digest, done))
        try:
            entry = await asyncio.wait_for(asyncio.shield(task), self._wait_budget(context))
        except TimeoutError:
            log.warning("gemini cache: %s is slow; calling uncached", operation)
            return None
        if entry is None:
            return None
        return Lease(entry.digest, entry.name, entry.tokens if mine else None)

    def _creating_done(self, digest: str, task: asyncio.Task[CachedPrefix | None]) -> None:
        if self._creating.get(digest) is task:
            del self._creating[digest]

    async def _create(
        self, prefix: CachePrefix, context: CallContext | None, operation: str
    ) -> CachedPrefix | None:
        ttl = self._ttl(prefix)
        started = self._now()
        try:
            created = await self._caches.create(
                model=prefix.model, config=prefix.create_config(ttl, self.http_options)
            )
        except Exception as exc:  # any failure means "uncached", never a failed request
            outcome = cache_outcome(exc)
            if outcome == "invalid_request" and _TOO_SMALL.search(error_message(exc)):
                outcome = "too_small"
                self._too_small[prefix.digest] = started + ttl
            self._count(operation, outcome)
            log.warning("gemini cache: %s failed (%s); calling uncached", operation, outcome)
            return None
        if not created.name:
            self._count(operation, "unavailable")
            return None
        usage = created.usage_metadata
        tokens = (usage.total_token_count if usage else None) or prefix.estimated_tokens
        entry = CachedPrefix(
            digest=prefix.digest,
            name=created.name,
            model=prefix.model,
            ttl=ttl,
            # Our clock, not the server's expireTime: immune to clock skew, and a little early.
            expire_at=started + ttl,
            tokens=tokens,
            tenant=context.tenant if context else None,
            request_id=context.request_id if context else None,
            usage=context.usage if context else None,
            last_used=started,
            accounted_until=started,
        )
        self._count(operation, "ok")
        self._store(entry)
        self._ensure_sweeper()
        return entry

    def _store(self, entry: CachedPrefix) -> None:
        self._entries[entry.digest] = entry
        self._entries.move_to_end(entry.digest)
        while len(self._entries) > self._settings.max_entries:
            _, evicted = self._entries.popitem(last=False)
            self._in_background(self._delete(evicted))

    # --- use, refresh, expiry, delete ----------------------------------------------------

    def _use(self, entry: CachedPrefix, now: float, ttl: int) -> None:
        entry.last_used = now
        entry.ttl = max(entry.ttl, ttl)  # a longer retention asked for the same prefix wins
        self._entries.move_to_end(entry.digest)
        if entry.expire_at - now < entry.ttl / 2 and entry.digest not in self._refreshing:
            self._in_background(self._refresh(entry))

    async def _refresh(self, entry: CachedPrefix) -> None:
        task = self._refreshing.get(entry.digest)
        if task is None:
            task = asyncio.create_task(self._update(entry))
            self._refreshing[entry.digest] = task
            task.add_done_callback(lambda _: self._refreshing.pop(entry.digest, None))
        await asyncio.shield(task)

    async def _update(self, entry: CachedPrefix) -> None:
        started = self._now()
        config = types.UpdateCachedContentConfig(
            ttl=f"{entry.ttl}s", http_options=self.http_options
        )
        try:
            await self._caches.update(name=entry.name, config=config)
        except Exception as exc:  # the entry is then recreated on its next use
            outcome = cache_outcome(exc)
            self._count("update", outcome)
            if error_status(exc) in GONE_STATUSES:
                self._expired(entry, started)
            return
        self._count("update", "ok")
        self._account(entry, started)
        entry.expire_at = started + entry.ttl

    def _expired(self, entry: CachedPrefix, now: float) -> None:
        """Forget an entry that is gone on the provider's side (billed until `now` at most)."""
        self._account(entry, now)
        if self._entries.get(entry.digest) is entry:
            del self._entries[entry.digest]

    async def _delete(self, entry: CachedPrefix) -> None:
        if self._entries.get(entry.digest) is entry:
            del self._entries[entry.digest]
        now = self._now()
        config = types.DeleteCachedContentConfig(http_options=self.http_options)
        try:
            await self._caches.delete(name=entry.name, config=config)
        except Exception as exc:  # still billed until it expires, unless it is gone already
            self._count("delete", cache_outcome(exc))
            self._account(entry, now if error_status(exc) in GONE_STATUSES else entry.expire_at)
            return
        self._count("delete", "ok")
        self._account(entry, now)

    def _account(self, entry: CachedPrefix, until: float) -> None:
        end = min(until, entry.expire_at)
        seconds = end - entry.accounted_until
        if seconds <= 0:
            return
        entry.accounted_until = end
        if entry.usage is None:
            return
        entry.usage.record(
            UsageEvent(
                request_id=(entry.request_id or "")[:_MAX_FIELD],
                service=SERVICE,
                tenant=entry.tenant[:_MAX_FIELD] if entry.tenant else None,
                operation=STORAGE_OPERATION,
                model=f"{PROVIDER}/{entry.model}"[:_MAX_FIELD],
                cache_storage_token_hours=entry.tokens * seconds / 3600.0,
                latency_seconds=0.0,
                outcome="completed",
                finished_at=datetime.now(UTC),
            )
        )

    # --- plumbing ------------------------------------------------------------------------

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.sweep_every)
            try:
                await self.sweep()
            except Exception:  # the sweeper must outlive one bad round
                log.exception("gemini cache: sweep failed")

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _ttl(self, prefix: CachePrefix) -> int:
        long = prefix.retention == "1h"
        return self._settings.ttl_long if long else self._settings.ttl_short

    def _wait_budget(self, context: CallContext | None) -> float:
        """Seconds a call waits for a create or refresh: the settings' budget, at most a
        quarter of the call's first-token timeout."""
        first_token = context.first_token_timeout if context else None
        budget = self._settings.wait_budget
        return min(budget, first_token / 4) if first_token else budget

    def _count(self, operation: str, outcome: str) -> None:
        self._operations[(operation, outcome)] += 1

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()


def cache_http_options(client_api_version: str | None) -> types.HttpOptions | None:
    """Per-call options for cache calls: `v1beta` when the client is pinned to `v1` (the
    only version without `cachedContents`), else None (the client's own version)."""
    if client_api_version == "v1":
        return types.HttpOptions(api_version=CACHE_API_VERSION)
    return None
