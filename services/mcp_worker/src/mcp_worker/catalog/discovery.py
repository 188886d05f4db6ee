"""Discovery: list each server's tools, resources and prompts into the catalog, publish the
result to the compacted catalog topic, and refresh on `list_changed` with a debounce, so a
server that sends a burst of notifications costs one listing, not a storm.

A record is published when it differs from the last one Kafka acknowledged: the health
probe re-lists every running server, and a large API's record (megabytes, compressed at
some cost) need not travel again when nothing changed. A record Kafka refuses is logged and
kept in `unpublished` (shown in `/health`) until one of the server's records lands."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError  # pyright: ignore[reportMissingTypeStubs]

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman.contracts.mcp import MCP_CATALOG_UPDATED, ToolChanged
from ferryman.kafka_config import KafkaConnection
from ferryman.publisher import KafkaPublisher, RecordTooLarge
from mcp_worker.catalog.catalog import Catalog, Status
from mcp_worker.catalog.catalog_topic import CatalogProducer, send_catalog_event
from mcp_worker.servers.fleet import Fleet

logger = logging.getLogger(__name__)


class Discovery:
    """Keeps the catalog and the catalog topic current.

    Args:
        catalog: the catalog.
        fleet: the servers.
        publisher: the worker's publisher (None until the worker started: nothing is
            published before).
        topic: the compacted catalog topic.
        source: the worker's `ce_source`.
        debounce: seconds to wait after a `list_changed` for more.
        status: a server's current status.
        on_changed: called with each tool definition change (the audit topic).
        connection: when given, records go through a gzip-compressing producer of their own
            (`CatalogProducer`) instead of `publisher`.
    """

    def __init__(
        self,
        catalog: Catalog,
        fleet: Fleet,
        *,
        publisher: Callable[[], KafkaPublisher | None],
        topic: str,
        source: str,
        debounce: float,
        status: Callable[[str], Status],
        on_changed: Callable[[ToolChanged], Awaitable[None]],
        connection: KafkaConnection | None = None,
    ) -> None:
        self._catalog = catalog
        self._fleet = fleet
        self._publisher = publisher
        self._topic = topic
        self._source = source
        self._debounce = debounce
        self._status = status
        self._on_changed = on_changed
        self._locks: dict[str, asyncio.Lock] = {}
        self._publishing: dict[str, asyncio.Lock] = {}
        self._pending: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._producer = (
            CatalogProducer(connection, client_id=_client_id(source))
            if connection is not None
            else None
        )
        self._acked: dict[str, bytes] = {}
        """Per server, the digest of its last record Kafka acknowledged."""
        self._refused: dict[str, bytes] = {}
        """Per server, the digest of a record refused as too large (not sent again)."""
        self.listings = 0
        """Listings run (a debounced burst counts once)."""
        self.unpublished: dict[str, str] = {}
        """Servers whose latest record is not on the catalog topic, and why."""

    async def ensure(self, server: str, timeout: float) -> None:
        """Discover the server unless its catalog is already known.

        Raises:
            FerrymanError: the server cannot be reached or listed.
        """
        current = self._catalog.get(server)
        if current is not None and current.discovered:
            return
        await self.refresh(server, timeout)

    async def refresh(self, server: str, timeout: float, scope: str = "") -> None:
        """List the server now (on the session of `scope`: a change one tenant's session
        reports is checked on that session) and publish its record.

        Raises:
            FerrymanError: the server cannot be reached or listed.
        """
        try:
            await asyncio.wait_for(self._catalog.recalled.wait(), timeout)
        except TimeoutError:
            raise FerrymanError(
                ErrorCode.UNAVAILABLE, "the worker is still starting (reading its catalog)"
            ) from None
        lock = self._locks.setdefault(server, asyncio.Lock())
        async with lock:
            supervisor = self._fleet.get(server)
            if supervisor is None:
                return
            session = await supervisor.session(scope or None, timeout)
            tools = await session.list_tools(timeout)
            resources = await session.list_resources(timeout)
            prompts = await session.list_prompts(timeout)
            self.listings += 1
            supervisor.succeeded()
            if self._catalog.get(server) is None:
                return  # removed meanwhile
            changes = self._catalog.update(
                server,
                tools,
                [r.model_dump(mode="json", by_alias=True, exclude_none=True) for r in resources],
                [p.model_dump(mode="json", by_alias=True, exclude_none=True) for p in prompts],
                session.protocol_version,
            )
            current = self._catalog.get(server)
            if current is not None:
                current.package_version = self._fleet.package_versions.get(server)
                backend = self._fleet.api_backend(server)
                if backend is not None:
                    current.api_version = backend.spec.version
                    current.spec_digest = backend.spec.digest
        for change in changes:
            await self._on_changed(change)
        await self.publish(server)

    def schedule(self, server: str, scope: str = "") -> None:
        """Refresh the server after the debounce (a burst of notifications: one listing)."""
        key = (server, scope)
        if key in self._pending:
            return

        async def later() -> None:
            try:
                await asyncio.sleep(self._debounce)  # the debounce window itself
                if self._pending.get(key) is asyncio.current_task():
                    del self._pending[key]  # a notification from now on schedules anew
                supervisor = self._fleet.get(server)
                timeout = supervisor.config.timeout if supervisor else 30.0
                await self.refresh(server, timeout, scope)
            except FerrymanError as exc:
                logger.warning("re-listing %s failed: %s", server, exc.message)
            except Exception as exc:  # logged: a background task's failure is never silent
                logger.error("re-listing %s failed: %r", server, exc)
            finally:
                if self._pending.get(key) is asyncio.current_task():
                    del self._pending[key]

        self._pending[key] = asyncio.create_task(later(), name=f"mcp-relist-{server}")

    async def publish(self, server: str) -> None:
        """Publish the server's record (a tombstone when it is no longer registered) unless
        the topic already has it. A failure is logged and kept in `unpublished`."""
        publisher = self._publisher()
        if publisher is None:
            return
        # One publish per server at a time, its record taken inside: the last record sent
        # is the newest state (a compacted topic keeps only the last).
        async with self._publishing.setdefault(server, asyncio.Lock()):
            await self._publish(publisher, server)

    async def _publish(self, publisher: KafkaPublisher, server: str) -> None:
        record = self._catalog.record(server, self._status(server))
        data = None if record is None else record.model_dump_json().encode()
        digest = hashlib.sha256(data).digest() if data is not None else b""
        if data is not None and digest in (self._acked.get(server), self._refused.get(server)):
            return
        try:
            await self._send(publisher, server, data)
        except RecordTooLarge as exc:
            self._refused[server] = digest
            self._failed(
                server,
                f"a record of about {exc.size:,} bytes (before compression) is more than"
                f" topic {self._topic!r} accepts (raise its max.message.bytes)",
            )
            return
        except KafkaError as exc:
            # Not acknowledged: the server's next listing (a health probe) sends it again.
            self._failed(server, f"{type(exc).__name__} from Kafka")
            return
        if data is None:
            self._acked.pop(server, None)
        else:
            self._acked[server] = digest
        self._refused.pop(server, None)
        if self.unpublished.pop(server, None) is not None:
            logger.info("catalog record of %s published", server)

    async def _send(self, publisher: KafkaPublisher, server: str, data: bytes | None) -> None:
        if self._producer is not None:
            publisher = await self._producer.publisher()
        try:
            await send_catalog_event(
                publisher, self._topic, MCP_CATALOG_UPDATED, data, key=server, source=self._source
            )
        except KafkaError as exc:
            if not exc.retriable:
                raise
            # Refused beside a too large record, or the producer was replaced: once more.
            await send_catalog_event(
                publisher, self._topic, MCP_CATALOG_UPDATED, data, key=server, source=self._source
            )

    def _failed(self, server: str, why: str) -> None:
        self.unpublished[server] = why
        logger.error(
            "catalog record of %s not published: %s; catalog readers (the LLM tool loop, a "
            "restarted replica) do not see its current tools",
            server,
            why,
        )

    async def close(self) -> None:
        """Cancel pending refreshes; stop the catalog producer."""
        for task in list(self._pending.values()):
            task.cancel()
        await asyncio.gather(*self._pending.values(), return_exceptions=True)
        if self._producer is not None:
            await self._producer.close()


def _client_id(source: str) -> str:
    """The catalog producer's Kafka client id, from the worker's `ce_source`."""
    return "-".join(part for part in source.split("/") if part) + "-catalog"
