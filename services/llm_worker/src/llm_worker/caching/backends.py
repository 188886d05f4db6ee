"""Where the response cache keeps answers: this replica's memory, or a Redis shared by every
replica. Both take whole keys (`KEY_PREFIX` included) and opaque blobs."""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, Protocol

import redis.asyncio as aioredis

from llm_worker.caching.response_key import KEY_PREFIX

INVALIDATION_MARKER = "ferryman:rc:inv:"
"""Prefix of the Redis keys that say an invalidation event was acted on already."""

BAD_URL: Final = (
    "LLM_WORKER_RESPONSE_CACHE__REDIS_URL is not a valid Redis URL; percent-encode the"
    " password or use the password file setting (LLM_WORKER_RESPONSE_CACHE__REDIS_PASSWORD_FILE)"
)
"""The error of a malformed URL (the parser's own would quote the password)."""

SCAN_BATCH = 500
"""Keys asked for per `SCAN` step, and unlinked per `UNLINK`."""


class ResponseStore(Protocol):
    """A backend of the response cache."""

    async def get(self, keys: list[str]) -> list[bytes | None]:
        """The blobs under `keys` (None where there is none), in one round trip."""
        ...

    async def put(self, key: str, blob: bytes, ttl: float) -> None:
        """Keep `blob` under `key` for `ttl` seconds."""
        ...

    async def invalidate(self, prefix: str, before: datetime, marker: str) -> int:
        """Drop the entries whose key starts with `KEY_PREFIX + prefix` stored before
        `before`; `marker` (the event's id) makes a replayed event a no-op where the store
        cannot tell when an entry was stored. Returns how many were dropped."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


@dataclass
class _Held:
    blob: bytes
    stored_at: float
    expires_at: float


class MemoryStore:
    """An LRU of blobs in this replica's memory, bounded in entries and bytes, each entry
    with its own expiry.

    Args:
        max_entries: entries kept at most (the least recently used go first).
        max_bytes: bytes of blobs kept at most.
        clock: wall-clock seconds since the epoch (expiry, and `before` of invalidations).
    """

    def __init__(
        self, *, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, _Held] = OrderedDict()
        self._bytes = 0

    async def get(self, keys: list[str]) -> list[bytes | None]:
        """See `ResponseStore.get` (expired entries are dropped as they are found)."""
        now = self._clock()
        found: list[bytes | None] = []
        for key in keys:
            held = self._entries.get(key)
            if held is not None and held.expires_at <= now:
                self._drop(key)
                held = None
            if held is not None:
                self._entries.move_to_end(key)
            found.append(None if held is None else held.blob)
        return found

    async def put(self, key: str, blob: bytes, ttl: float) -> None:
        """See `ResponseStore.put` (a blob over `max_bytes` is not kept)."""
        if len(blob) > self._max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        now = self._clock()
        self._entries[key] = _Held(blob, now, now + ttl)
        self._bytes += len(blob)
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))

    async def invalidate(self, prefix: str, before: datetime, marker: str) -> int:
        """See `ResponseStore.invalidate`: an entry stored at or after `before` stays, so a
        replayed event leaves newer answers alone."""
        cutoff = before.timestamp()
        start = KEY_PREFIX + prefix
        doomed = [
            key
            for key, held in self._entries.items()
            if key.startswith(start) and held.stored_at < cutoff
        ]
        for key in doomed:
            self._drop(key)
        return len(doomed)

    async def aclose(self) -> None:
        """Forget every entry."""
        self._entries.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def held_bytes(self) -> int:
        """Bytes of blobs held."""
        return self._bytes

    def _drop(self, key: str) -> None:
        held = self._entries.pop(key)
        self._bytes -= len(held.blob)


class RedisStore:
    """Blobs in a Redis every replica shares (`SET … PX`, `MGET`; eviction is Redis's own:
    run it with `maxmemory-policy allkeys-lru`).

    Args:
        url: `redis://host:port/db` or `rediss://…` (TLS); may carry the password.
        password_file: a file holding the password (instead of the URL).
        marker_ttl: seconds an invalidation's marker is kept (longer than the control
            topic is read back at start, so a replay finds it).
        timeout: seconds a connection attempt or command may take.

    Raises:
        OSError: `password_file` cannot be read.
        ValueError: `url` is not a Redis URL (`BAD_URL`, which never quotes it).
    """

    def __init__(
        self,
        url: str,
        *,
        password_file: Path | None = None,
        marker_ttl: int = 660,
        timeout: float = 2.0,
    ) -> None:
        password = password_file.read_text().strip() if password_file is not None else None
        try:
            self._redis = aioredis.Redis.from_url(  # pyright: ignore[reportUnknownMemberType]
                url, password=password, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        except ValueError:  # its message quotes the URL, password included
            raise ValueError(BAD_URL) from None
        self._marker_ttl = marker_ttl

    async def get(self, keys: list[str]) -> list[bytes | None]:
        """See `ResponseStore.get` (one `MGET`).

        Raises:
            redis.RedisError: Redis failed or is unreachable.
        """
        values = await self._redis.mget(keys)  # pyright: ignore[reportUnknownMemberType]
        return [value if isinstance(value, bytes) else None for value in values]

    async def put(self, key: str, blob: bytes, ttl: float) -> None:
        """See `ResponseStore.put` (`SET key blob PX ttl`).

        Raises:
            redis.RedisError: Redis failed or is unreachable.
        """
        await self._redis.set(key, blob, px=max(1, int(ttl * 1000)))  # pyright: ignore[reportUnknownMemberType]

    async def invalidate(self, prefix: str, before: datetime, marker: str) -> int:
        """See `ResponseStore.invalidate`: only the first replica to see event `marker` acts
        (`SET NX` on a marker key), then `SCAN`s the prefix and `UNLINK`s in batches.
        `before` is not checked: answers stored during the scan may go too. When the scan or
        an unlink fails, the marker is deleted again (best effort), so that another replica,
        or a replay, does the invalidation instead of skipping it.

        Raises:
            redis.RedisError: Redis failed or is unreachable.
        """
        marker_key = INVALIDATION_MARKER + marker
        first = await self._redis.set(  # pyright: ignore[reportUnknownMemberType]
            marker_key, b"1", nx=True, ex=self._marker_ttl
        )
        if not first:
            return 0
        try:
            return await self._drop(KEY_PREFIX + prefix)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._redis.delete(marker_key)  # pyright: ignore[reportUnknownMemberType]
            raise

    async def _drop(self, start: str) -> int:
        """`UNLINK` every key starting with `start`, in batches; return how many went.

        Raises:
            redis.RedisError: Redis failed or is unreachable.
        """
        dropped = 0
        batch: list[bytes] = []
        async for key in self._redis.scan_iter(match=start + "*", count=SCAN_BATCH):  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
            batch.append(key)  # pyright: ignore[reportUnknownArgumentType]
            if len(batch) >= SCAN_BATCH:
                dropped += await self._unlink(batch)
                batch.clear()
        if batch:
            dropped += await self._unlink(batch)
        return dropped

    async def _unlink(self, keys: list[bytes]) -> int:
        """`UNLINK` `keys`; return how many existed.

        Raises:
            redis.RedisError: Redis failed or is unreachable.
        """
        return int(await self._redis.unlink(*keys))  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]

    async def ping(self) -> bool:
        """Whether Redis answers.

        Raises:
            redis.RedisError: Redis failed or is unreachable.
        """
        return bool(await self._redis.ping())  # pyright: ignore[reportUnknownMemberType, reportGeneralTypeIssues]

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
