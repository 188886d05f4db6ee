"""The mcp_worker's compacted catalog topic as a live view: the latest record per server,
filtered by the same access rule the mcp_worker enforces."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence

from pydantic import ValidationError

from ferryman.contracts.mcp import CatalogRecord, ToolEntry, tenant_may_use
from ferryman.kafka_config import KafkaConnection
from ferryman_runtime.topic_follower import FollowedRecord, TopicFollower

logger = logging.getLogger(__name__)


def decode_catalog_record(
    key: bytes | None, value: bytes | None
) -> tuple[str, CatalogRecord | None] | None:
    """A catalog topic record as (server, its record), the record None for a tombstone;
    None (logged) for a record that is no catalog record: no key, or an invalid value.

    The value is the `CatalogRecord` JSON (the data of a binary-mode CloudEvent, keyed by
    the server name); no value is a tombstone (the server was removed).
    """
    if key is None:
        return None
    server = key.decode("utf-8", "replace")
    if value is None:
        return server, None
    try:
        return server, CatalogRecord.model_validate_json(value)
    except ValidationError:
        logger.warning("catalog record of %s is not valid; ignored", server[:128])
        return None


class CatalogView:
    """Follows the mcp_worker's compacted catalog topic: the latest CatalogRecord per server
    (tombstones remove).

    Args:
        connection: the Kafka connection.
        topic: the catalog topic.
        client_id: names the consumer.
    """

    def __init__(self, connection: KafkaConnection, topic: str, *, client_id: str) -> None:
        self._follower = TopicFollower(
            connection, topic, on_record=self.apply, client_id=client_id, start="beginning"
        )
        self._records: dict[str, CatalogRecord] = {}
        self.ready = self._follower.ready
        """Set once the topic was read to its end (as of the start)."""
        self.version = 0
        """Increments on every applied change."""

    @property
    def live(self) -> bool:
        """Positioned and reading (False between a failure and the restart)."""
        return self._follower.live

    async def run(self) -> None:
        """Follow the topic until cancelled, starting again after a failure (see
        `TopicFollower.run`)."""
        await self._follower.run()

    async def sync(self, timeout: float) -> None:
        """Return once every record published before this call was applied.

        Raises:
            TimeoutError: not within `timeout` seconds.
        """
        await self._follower.sync(timeout)

    def apply(self, record: FollowedRecord) -> None:
        """Apply one catalog topic record (an invalid one is logged and ignored)."""
        decoded = decode_catalog_record(record.key, record.value)
        if decoded is None:
            return
        server, latest = decoded
        if latest is None:
            if self._records.pop(server, None) is not None:
                self.version += 1
        elif self._records.get(server) != latest:
            self._records[server] = latest
            self.version += 1

    def record(self, server: str) -> CatalogRecord | None:
        """The server's latest record, or None when it is unknown (or removed)."""
        return self._records.get(server)

    def servers(self) -> list[str]:
        """Every server with a record, sorted."""
        return sorted(self._records)

    def tools_for(
        self, tenant: str | None, server: str, patterns: Sequence[str]
    ) -> list[ToolEntry]:
        """The server's tools whose names match one of `patterns` (`fnmatch`), that `tenant`
        may use (`tenant_may_use` with the record's tenants and access), and that are not
        quarantined; [] for an unknown server."""
        latest = self._records.get(server)
        if latest is None:
            return []
        return [
            tool
            for tool in latest.entry.tools
            if tool.state == "available"
            and any(fnmatch.fnmatchcase(tool.name, pattern) for pattern in patterns)
            and tenant_may_use(tenant, server, tool.name, latest.tenants, latest.access)
        ]
