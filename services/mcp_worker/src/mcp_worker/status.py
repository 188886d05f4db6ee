"""What the mcp_worker's `/health` shows beside the kit's own: the registry, every server's
state (an API's document version too), health, cancels, the result cache, rate limits, and
catalog records Kafka refused."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcp_worker.execution.service import server_status

if TYPE_CHECKING:
    from mcp_worker.app import McpWorker


def worker_details(worker: McpWorker) -> dict[str, Any]:
    """The worker's details for `/health`."""
    return {
        "registry": worker.watcher.status() if worker.watcher else None,
        "servers": {
            name: {
                "state": s.state,
                "status": server_status(s),
                "transport": s.config.transport,
                "protocol_version": s.protocol_version,
                "sessions": s.session_count,
                "restarts": s.restarts,
                "last_success": s.last_success.isoformat() if s.last_success else None,
                "last_error": s.last_error,
                "circuit": s.breaker.state,
                "package_version": worker.fleet.package_versions.get(name),
                **_api(worker, name),
            }
            for name, s in sorted(worker.fleet.supervisors.items())
        },
        "catalog_unpublished": dict(worker.discovery.unpublished),
        "rate_limits": {"waits": worker.rate_limits.waits},
        "api_document_changes": worker.api_changes.reports,
        "health": worker.monitor.snapshot(),
        "cancels": {
            "reader": bool(worker.control and worker.control.live),
            "running": worker.board.running(),
            "cancelled": worker.board.cancelled,
        },
        "cache": {
            "entries": len(worker.cache),
            "hits": worker.cache.hits,
            "misses": worker.cache.misses,
        },
    }


def _api(worker: McpWorker, name: str) -> dict[str, Any]:
    backend = worker.fleet.api_backend(name)
    if backend is None:
        return {}
    return {
        "api": {
            "title": backend.spec.title,
            "version": backend.spec.version,
            "digest": backend.spec.digest,
            "base_url": backend.base_url,
            "tools": len(backend.tools),
            "warnings": list(backend.warnings[:20]),
        }
    }
