"""Response caching of API calls with hishel, keyed per tenant: one tenant never gets a
response cached for another (hishel's default key is the URL alone).

`rfc` follows the API's own `Cache-Control`, `ETag` and `Vary` (RFC 9111); `ttl` keeps
successful GET answers for a fixed time, for APIs that send no cache headers; `off` stores
nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import anysqlite
import httpx2
from hishel import AsyncSqliteStorage, CacheOptions
from hishel.httpx2 import AsyncCacheTransport

CacheMode = Literal["off", "rfc", "ttl"]


def caching_client(
    database: Path | anysqlite.Connection,
    *,
    max_size: int,
    transport: httpx2.AsyncBaseTransport | None = None,
    timeout: httpx2.Timeout | None = None,
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
    # No read timeout: each call's own deadline bounds it.
    return httpx2.AsyncClient(transport=cached, follow_redirects=False, timeout=timeout)


async def memory_database() -> anysqlite.Connection:
    """An SQLite database in memory, for one client's cache."""
    return await anysqlite.connect(":memory:", isolation_level=None)


def cache_request(
    request: httpx2.Request,
    *,
    tenant: str | None,
    mode: CacheMode,
    ttl: float | None,
    varies: Sequence[str] = (),
) -> None:
    """Set how `request` may be answered from the cache; with `off` the request must not go
    through the caching client at all. Call it before credentials are added.

    The key holds the tenant, the URL and the values of the request's headers named in
    `varies` (its header and cookie parameters): never the credentials, which are the
    tenant's own anyway. The cache is private (one tenant's), so responses to requests with
    `Authorization` are stored too; `Cache-Control: private` is honoured as such.

    Raises:
        ValueError: `mode` is `off`.
    """
    if mode == "off":
        raise ValueError("a request that must not be cached does not use the caching client")
    parts = [tenant or "", mode, str(request.url)]
    parts += [f"{name.lower()}={request.headers.get(name, '')}" for name in sorted(varies)]
    if varies and "cookie" in request.headers:
        parts.append(f"cookie={request.headers['cookie']}")
    identity = "\0".join(parts)
    config: dict[str, Any] = {"key": hashlib.sha256(identity.encode()).hexdigest()}
    if mode == "ttl":
        config.update(rfc=False, ttl=ttl)
    else:
        config.update(rfc=CacheOptions(shared=False))
    request.extensions["caching"] = config


def from_cache(response: httpx2.Response) -> bool:
    """Whether the cache answered (without a call, or after a 304 revalidation)."""
    status: Any = response.extensions.get("caching")
    if isinstance(status, dict):  # what hishel 2.0 sets
        return bool(cast(dict[str, Any], status).get("from_cache"))
    return bool(getattr(status, "from_cache", False))
