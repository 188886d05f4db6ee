"""The connection pool every provider SDK client is given."""

from __future__ import annotations

import httpx2


def pooled_http_client(max_connections: int) -> httpx2.AsyncClient:
    """An `httpx2.AsyncClient` for one provider SDK client: redirects off, pool sized.

    The SDKs' own clients follow redirects (a 307 to another origin would receive the
    prompt, and their auth headers) and pool at most 1,000 connections, fewer than the
    streams one worker may hold open. Timeouts are the SDK's, sent with each request.

    Args:
        max_connections: connections the pool may hold (one per concurrent call); all may
            stay alive between calls, for a burst's connections to be reused, not re-opened.
    """
    limits = httpx2.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return httpx2.AsyncClient(limits=limits, follow_redirects=False)
