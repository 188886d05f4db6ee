"""The audit topic: one record per call (who, what, a digest of the arguments with the
configured fields redacted, the outcome and how long it took), and tool definition changes.
Nothing secret is written: redaction happens before hashing or recording."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import Any

from aiokafka.errors import KafkaError  # pyright: ignore[reportMissingTypeStubs]
from pydantic import BaseModel

from ferryman.contracts.mcp import (
    MCP_API_CHANGED,
    MCP_CALL_AUDITED,
    MCP_TOOL_CHANGED,
    ApiChanged,
    CallAudit,
    ToolChanged,
)
from ferryman.publisher import KafkaPublisher
from ferryman_runtime.side_events import enqueue_event, publish_event
from mcp_worker.catalog.definitions import canonical_json

logger = logging.getLogger(__name__)

REDACTED = "[redacted]"

Audited = asyncio.Future[Any] | None
"""An enqueued audit record's acknowledgement (None: it could not be enqueued)."""


def redact_fields(value: Any, names: frozenset[str]) -> Any:
    """A copy of `value` with every object field named in `names` (case-insensitive, any
    depth) replaced by `[redacted]`."""
    if isinstance(value, dict):
        return {
            k: REDACTED if str(k).lower() in names else redact_fields(v, names)  # pyright: ignore[reportUnknownArgumentType]
            for k, v in value.items()  # pyright: ignore[reportUnknownVariableType]
        }
    if isinstance(value, list):
        return [redact_fields(v, names) for v in value]  # pyright: ignore[reportUnknownVariableType]
    return value


class Auditor:
    """Publishes audit records (a failure to publish is logged, never fails the call: the
    record's loss is visible in the `published` counter staying behind).

    Args:
        publisher: the worker's publisher (read when a record is sent).
        topic: the audit topic.
        source: the worker's `ce_source`.
        redact: field names redacted (lower-case).
        record_arguments: whether records carry the redacted arguments.
    """

    def __init__(
        self,
        publisher: Callable[[], KafkaPublisher],
        topic: str,
        *,
        source: str,
        redact: list[str],
        record_arguments: bool,
    ) -> None:
        self._publisher = publisher
        self._topic = topic
        self._source = source
        self._redact = frozenset(name.lower() for name in redact)
        self._record_arguments = record_arguments
        self.published = 0
        self.failed = 0

    def arguments(
        self, arguments: dict[str, Any] | None, extra: list[str]
    ) -> tuple[str | None, dict[str, Any] | None]:
        """(digest, recorded form) of arguments after redaction."""
        if arguments is None:
            return None, None
        names = self._redact | frozenset(n.lower() for n in extra)
        redacted: dict[str, Any] = redact_fields(arguments, names)
        digest = hashlib.sha256(canonical_json(redacted).encode()).hexdigest()
        return digest, redacted if self._record_arguments else None

    async def call(self, record: CallAudit) -> Audited:
        """Enqueue one call record, keyed by server; `settle` waits for its ack."""
        try:
            return await enqueue_event(
                self._publisher(),
                self._topic,
                MCP_CALL_AUDITED,
                record,
                key=record.server,
                source=self._source,
            )
        except KafkaError as exc:
            self.failed += 1
            logger.error("audit record not published: %s", type(exc).__name__)
            return None

    async def settle(self, audited: Audited) -> None:
        """Wait for an enqueued record's ack (a failure is counted and logged, not raised:
        the call itself succeeded)."""
        if audited is None:
            return
        try:
            await audited
            self.published += 1
        except KafkaError as exc:
            self.failed += 1
            logger.error("audit record not published: %s", type(exc).__name__)

    async def tool_changed(self, change: ToolChanged) -> None:
        """Publish a tool definition change, keyed by server."""
        await self._send(MCP_TOOL_CHANGED, change, change.server)

    async def api_changed(self, change: ApiChanged) -> None:
        """Publish an API document change (its compatibility report), keyed by server."""
        await self._send(MCP_API_CHANGED, change, change.server)

    async def _send(self, event_type: str, payload: BaseModel, key: str) -> None:
        try:
            await publish_event(
                self._publisher(), self._topic, event_type, payload, key=key, source=self._source
            )
            self.published += 1
        except KafkaError as exc:
            self.failed += 1
            logger.error("audit record not published: %s", type(exc).__name__)
