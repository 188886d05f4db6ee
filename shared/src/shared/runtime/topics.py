"""Creates missing topics at startup (idempotent)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.errors import TopicAlreadyExistsError  # pyright: ignore[reportMissingTypeStubs]

logger = logging.getLogger(__name__)


async def ensure_topics(
    bootstrap_servers: str, names: Iterable[str], *, partitions: int, replication_factor: int
) -> None:
    """Create each topic in `names` that does not exist yet.

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
    finally:
        await admin.close()
