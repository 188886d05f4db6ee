"""How images reach each provider, decided in one place, and the resolution step of a chat
job (called by the chat service before routing calls any deployment)."""

from __future__ import annotations

import dataclasses
from typing import Final

from ferryman.contracts import ErrorCode, FerrymanError
from llm_worker.chat.job import ChatJob
from llm_worker.datarefs.port import DataRefResolver, ImageDelivery
from llm_worker.routing.table import RoutingTable

PROVIDER_IMAGES: Final[dict[str, ImageDelivery]] = {
    "openai": "url",  # image_url.url: https or data: URLs, fetched by OpenAI
    "azure": "url",  # the same wire format
    "anthropic": "url",  # source type `url` (https), or `base64` from a data: URL
    "mock": "url",  # reads no images
    "gemini": "inline",  # inline_data (its file_data is meant for Files API / GCS URIs)
}
"""Per provider: whether it fetches image URLs itself (`url`) or needs the bytes (`inline`).
A provider not listed gets the bytes: every adapter maps `data:` URLs."""


def image_delivery(table: RoutingTable, model: str) -> ImageDelivery:
    """How images go to whichever deployment may serve `model` in `table`: presigned URLs
    when every provider it may reach (through fallbacks, larger-context and degraded routes
    too) fetches URLs, inline data otherwise."""
    routes = table.config.routes
    seen: set[str] = set()
    pending = [model]
    providers: set[str] = set()
    while pending:
        alias = pending.pop()
        route = routes.get(alias)
        if alias in seen or route is None:
            continue
        seen.add(alias)
        providers.update(table.clients[name].provider for name in route.deployments)
        pending.extend(route.fallbacks)
        pending.extend(r for r in (route.larger_context, route.degraded) if r is not None)
    if providers and all(PROVIDER_IMAGES.get(p) == "url" for p in providers):
        return "url"
    return "inline"


async def resolve_job(
    resolver: DataRefResolver | None, job: ChatJob, table: RoutingTable, within: float
) -> ChatJob:
    """`job` with the dataref parts of its request resolved (itself when it has none); the
    request as sent stays in `unresolved`.

    Args:
        resolver: resolves datarefs (None: this worker is not connected to storage).
        job: the chat job.
        table: the routing table serving it (its providers decide how images go).
        within: seconds left before the request's deadline (`math.inf`: none).

    Raises:
        FerrymanError: `invalid_request` when the request holds datarefs and `resolver` is
            None; what `DataRefResolver.resolve` raises.
    """
    if not job.request.datarefs():
        return job
    if resolver is None:
        raise FerrymanError(
            ErrorCode.INVALID_REQUEST,
            "the request references stored objects (dataref parts), but this worker does not"
            " resolve them: it is not connected to a storage_worker"
            " (LLM_WORKER_STORAGE__REQUEST_TOPIC)",
            retryable=False,
        )
    request = await resolver.resolve(
        job.request,
        tenant=job.tenant,
        images=image_delivery(table, job.request.model),
        within=within,
    )
    return dataclasses.replace(job, request=request, unresolved=job.request)
