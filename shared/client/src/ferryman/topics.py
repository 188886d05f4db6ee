"""Creates missing topics at startup (idempotent)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.errors import TopicAlreadyExistsError  # pyright: ignore[reportMissingTypeStubs]

logger = logging.getLogger(__name__)


async def ensure_topics(
    bootstrap_servers: str,
    names: Iterable[str],
    *,
    partitions: int,
    replication_factor: int,
    ready_timeout: float = 30.0,
) -> None:
    """Create each topic in `names` that does not exist yet, and wait until its partitions
    have leaders (at most `ready_timeout` seconds).

    Raises:
        aiokafka.errors.KafkaError: the cluster refused or could not be reached.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = sorted(set(names) - existing)
        if not missing:
            return
        new = [NewTopic(name, partitions, replication_factor) for name in missing]
        # A replica may create them at the same time.
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(new)
        logger.info("created topics %s", missing)
        await _wait_for_leaders(admin, missing, timeout=ready_timeout)
    finally:
        await admin.close()


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, names: list[str], *, timeout: float
) -> None:
    # A consumer that subscribes before a new topic's partitions have leaders gets no
    # partitions assigned, and only notices them at its next metadata refresh (minutes).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        described: list[dict[str, Any]] = await admin.describe_topics(names)  # pyright: ignore[reportUnknownMemberType]
        if all(_has_leaders(topic) for topic in described):
            return
        if loop.time() >= deadline:
            logger.warning("topics %s have no leaders after %.0fs; continuing", names, timeout)
            return
        await asyncio.sleep(0.1)


def _has_leaders(topic: dict[str, Any]) -> bool:
    partitions: list[dict[str, Any]] = topic.get("partitions") or []
    return (
        topic.get("error_code", 0) == 0
        and bool(partitions)
        and all(p.get("leader", -1) >= 0 for p in partitions)
    )
