"""Response caching of API calls with hishel, keyed per tenant: one tenant never gets a
response cached for another (hishel's default key is the URL alone).

`rfc` follows the API's own `Cache-Control`, `ETag` and `Vary` (RFC 9111); `ttl` keeps
successful GET answers for a fixed time, for APIs that send no cache headers; `off` stores
nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal, cast

import anysqlite
import httpx2
from hishel import AsyncSqliteStorage
from hishel.httpx2 import AsyncCacheTransport

CacheMode = Literal["off", "rfc", "ttl"]


def caching_client(
    database: Path | anysqlite.Connection,
    *,
    max_size: int,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> httpx2.AsyncClient:
    """An HTTP client whose responses may be cached in `database` (a SQLite file, or an open
    connection: `await memory_database()` keeps nothing on disk), at most `max_size` bytes.
    Redirects are not followed."""
    if isinstance(database, Path):
        storage = AsyncSqliteStorage(database_path=database, max_size=max_size)
    else:
        storage = AsyncSqliteStorage(connection=database, max_size=max_size)
    cached = AsyncCacheTransport(
        next_transport=transport or httpx2.AsyncHTTPTransport(), storage=storage, rfc=True
    )
    # No client timeout: each call's own deadline bounds it.
    return httpx2.AsyncClient(transport=cached, follow_redirects=False, timeout=None)


async def memory_database() -> anysqlite.Connection:
    """An SQLite database in memory, for one client's cache."""
    return await anysqlite.connect(":memory:", isolation_level=None)


def cache_request(
    request: httpx2.Request, *, tenant: str | None, mode: CacheMode, ttl: float | None
) -> None:
    """Set how `request` may be answered from the cache (its key holds the tenant); with
    `off` the request must not go through the caching client at all.

    Raises:
        ValueError: `mode` is `off`.
    """
    if mode == "off":
        raise ValueError("a request that must not be cached does not use the caching client")
    identity = f"{tenant or ''}\0{mode}\0{request.url}"
    config: dict[str, Any] = {"key": hashlib.sha256(identity.encode()).hexdigest()}
    if mode == "ttl":
        config.update(rfc=False, ttl=ttl)
    else:
        config.update(rfc=True)
    request.extensions["caching"] = config


def from_cache(response: httpx2.Response) -> bool:
    """Whether the cache answered (without a call, or after a 304 revalidation)."""
    status: Any = response.extensions.get("caching")
    if isinstance(status, dict):  # what hishel 2.0 sets
        return bool(cast(dict[str, Any], status).get("from_cache"))
    return bool(getattr(status, "from_cache", False))
