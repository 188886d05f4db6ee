"""Creates missing topics (idempotent) and waits for a topic's partitions to be known."""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportUnknownArgumentType=false

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.errors import TopicAlreadyExistsError  # pyright: ignore[reportMissingTypeStubs]

from ferryman.kafka_config import KafkaConnection

logger = logging.getLogger(__name__)


async def ensure_topics(
    connection: str | KafkaConnection,
    names: Iterable[str],
    *,
    partitions: int,
    replication_factor: int,
    ready_timeout: float = 30.0,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Create each topic in `names` that does not exist yet, and wait until its partitions
    have leaders (at most `ready_timeout` seconds). `configs` gives topic configurations by
    name (for example `{"cleanup.policy": "compact"}` for a catalog topic).

    `connection` is a `KafkaConnection`, or a bootstrap list of a plaintext cluster.

    Raises:
        aiokafka.errors.KafkaError: the cluster refused (for example, the principal may not
            create topics) or could not be reached.
    """
    options = KafkaConnection.coerce(connection).aiokafka_options("ferryman-admin")
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = sorted(set(names) - existing)
        if not missing:
            return
        new = [
            NewTopic(
                name,
                partitions,
                replication_factor,
                topic_configs=dict((configs or {}).get(name, {})),
            )
            for name in missing
        ]
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


async def wait_for_partitions(
    consumer: AIOKafkaConsumer, topic: str, timeout: float = 30.0
) -> set[int]:
    """Return the partitions of `topic`, waiting for metadata of a just-created topic.

    Raises:
        LookupError: the topic has no partitions after `timeout` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return set(partitions)
        if loop.time() > deadline:
            raise LookupError(f"topic {topic!r} does not exist (no partitions in metadata)")
        await consumer._client.force_metadata_update()  # pyright: ignore[reportPrivateUsage]
        if not consumer.partitions_for_topic(topic):
            await asyncio.sleep(0.1)  # metadata of a new topic propagates within moments
