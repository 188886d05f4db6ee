"""The tool-loop topic as the loop's memory: each step the worker recorded, and each tool
result the mcp_worker sent back.

Every replica reads the whole topic (no consumer group), from `window` seconds back at start.
A request redelivered after a crash, to any replica, finds the steps its earlier run took
(the model is not asked again for them) and the results of the tool calls it made (they are
not made again): the journal is what makes the loop crash-safe.

Records are CloudEvents in binary mode: `ferryman.llm.tool-loop.step` keyed by the chat
request's id, and the mcp_worker's replies keyed by the tool request's id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ferryman.codec import DecodeError, decode_event, encode_binary, header_value
from ferryman.contracts.errors import ErrorInfo
from ferryman.contracts.events import EXT_CORRELATION_ID
from ferryman.contracts.llm import CompletedToolCall, FinishReason, Usage
from ferryman.contracts.mcp import (
    MCP_CATALOG_LIST_COMPLETED,
    MCP_FAILED,
    MCP_TOOL_CALL_COMPLETED,
    McpFailed,
    ToolCallCompleted,
)
from ferryman.kafka_config import KafkaConnection
from ferryman.publisher import KafkaPublisher
from ferryman_runtime.topic_follower import FollowedRecord, TopicFollower

logger = logging.getLogger(__name__)

LOOP_STEP_RECORDED: Final = "ferryman.llm.tool-loop.step"

_RESULT_TYPES = frozenset({MCP_TOOL_CALL_COMPLETED, MCP_FAILED, MCP_CATALOG_LIST_COMPLETED})
_LLM_WORKER_SOURCES = "/ferryman/llm-worker/"
_MCP_WORKER_SOURCES = "/ferryman/mcp-worker/"
_ENTRY_OVERHEAD = 256
"""Bytes an entry costs besides its JSON (dict slots, keys, the bytes object)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class DispatchedCall(_Frozen):
    """A tool call a step sent (or was about to send) to the mcp_worker."""

    call_id: str
    function: str
    server: str
    tool: str
    arguments: str
    tool_request_id: str
    idempotent: bool


class LoopStep(_Frozen):
    """One model turn of one request, recorded before its tool calls are sent."""

    source: str
    request_id: str
    request_digest: str
    """sha256 of the request's data (a reused request id is not taken for a rerun)."""
    step: int = Field(ge=0)
    content: str
    tool_calls: list[CompletedToolCall]
    finish_reason: FinishReason
    usage: Usage
    deployment: str | None = None
    dispatched: list[DispatchedCall]


@dataclass(frozen=True)
class ToolOutcome:
    """How a tool call ended at the mcp_worker: its result, or its failure (neither: a
    catalog listing was answered)."""

    completed: ToolCallCompleted | None = None
    failed: ErrorInfo | None = None


def _outcome(event_type: str, raw: bytes) -> ToolOutcome:
    """The outcome a terminal reply of the mcp_worker says.

    Raises:
        pydantic.ValidationError: the reply is not valid.
    """
    if event_type == MCP_FAILED:
        return ToolOutcome(failed=McpFailed.model_validate_json(raw).error)
    if event_type == MCP_CATALOG_LIST_COMPLETED:
        return ToolOutcome()
    return ToolOutcome(completed=ToolCallCompleted.model_validate_json(raw))


class LoopJournal:
    """Indexes the tool-loop topic and writes steps to it.

    Args:
        connection: the Kafka connection.
        topic: the tool-loop topic.
        publisher: the worker's producer (asked for when needed: it exists once the worker does).
        source: `ce_source` of the step records.
        window: seconds read back at start; older entries are forgotten.
        memory: bytes of records kept at most (oldest forgotten first).
        client_id: names the follower's consumer.
        clock: wall-clock seconds (record timestamps are compared with it).
    """

    def __init__(
        self,
        connection: KafkaConnection,
        topic: str,
        publisher: Callable[[], KafkaPublisher],
        *,
        source: str,
        window: float,
        memory: int,
        client_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._topic = topic
        self._publisher = publisher
        self._source = source
        self._window = window
        self._memory = memory
        self._clock = clock
        # Raw JSON, parsed on lookup: parsed models take about ten times the memory.
        self._steps: dict[tuple[str, str], dict[int, bytes]] = defaultdict(dict)
        self._results: dict[str, tuple[str, bytes]] = {}
        self._held: OrderedDict[tuple[str, Any], tuple[int, float]] = OrderedDict()
        self._bytes = 0
        self._waiters: dict[str, list[asyncio.Future[ToolOutcome]]] = defaultdict(list)
        self.follower = TopicFollower(
            connection,
            topic,
            on_record=self.apply,
            client_id=client_id,
            start="window",
            window=window,
        )

    @property
    def ready(self) -> asyncio.Event:
        """Set once the topic was read up to where it ended at start."""
        return self.follower.ready

    async def run(self) -> None:
        """Follow the topic until cancelled."""
        await self.follower.run()

    async def sync(self, timeout: float) -> None:
        """Return once every record published before the call is indexed.

        Raises:
            TimeoutError: the topic could not be read that far within `timeout`.
        """
        await asyncio.wait_for(self.ready.wait(), timeout)
        await self.follower.sync(timeout)

    def steps(self, source: str, request_id: str) -> dict[int, LoopStep]:
        """The recorded steps of a request, by step number."""
        known = self._steps.get((source, request_id), {})
        return {number: LoopStep.model_validate_json(raw) for number, raw in known.items()}

    def result(self, tool_request_id: str) -> ToolOutcome | None:
        """The outcome of a tool call, if its terminal reply was read."""
        found = self._results.get(tool_request_id)
        return None if found is None else _outcome(*found)

    async def wait_result(self, tool_request_id: str, timeout: float) -> ToolOutcome | None:
        """The outcome of a tool call, waiting up to `timeout` seconds for it (None: none came)."""
        found = self.result(tool_request_id)
        if found is not None:
            return found
        future: asyncio.Future[ToolOutcome] = asyncio.get_running_loop().create_future()
        self._waiters[tool_request_id].append(future)
        try:
            return await asyncio.wait_for(future, max(timeout, 0.0))
        except TimeoutError:
            return None
        finally:
            waiting = self._waiters.get(tool_request_id)
            if waiting is not None:
                if future in waiting:
                    waiting.remove(future)
                if not waiting:
                    del self._waiters[tool_request_id]

    async def record(self, step: LoopStep) -> None:
        """Publish a step and wait for its acknowledgement.

        Raises:
            aiokafka.errors.KafkaError: the step was not acknowledged.
        """
        attributes = {
            "id": str(uuid.uuid4()),
            "type": LOOP_STEP_RECORDED,
            "source": self._source,
            "datacontenttype": "application/json",
            "time": datetime.now(UTC),
        }
        value = step.model_dump_json().encode()
        headers, value = encode_binary(attributes, value)
        acked = await self._publisher().send(
            self._topic, value, key=step.request_id.encode(), headers=headers
        )
        await acked
        self._apply_step((step.source, step.request_id), step.step, value, self._clock())

    def apply(self, record: FollowedRecord) -> None:
        """Index one record of the topic (anything else on it is ignored)."""
        stamp = record.timestamp_ms / 1000.0
        if record.value is None or stamp < self._clock() - self._window:
            return
        headers = record.headers
        event_type = header_value(headers, "ce_type")
        if event_type is not None:  # binary mode: the attributes are headers, the value is data
            source = header_value(headers, "ce_source") or ""
            request_id = header_value(headers, f"ce_{EXT_CORRELATION_ID}")
            raw = record.value
        else:  # structured mode: the envelope is the value
            try:
                event = decode_event(headers, record.value)
            except DecodeError:
                return
            event_type, source = event.type, event.source
            request_id = event.extension(EXT_CORRELATION_ID)
            raw = json.dumps(event.data).encode()
        # Read by type first: the progress events most of the topic holds are never parsed.
        try:
            if event_type == LOOP_STEP_RECORDED:
                # Only a worker writes steps; anything else is not trusted to steer a loop.
                if not source.startswith(_LLM_WORKER_SOURCES):
                    return
                step = LoopStep.model_validate_json(raw)
                self._apply_step((step.source, step.request_id), step.step, raw, stamp)
            elif event_type in _RESULT_TYPES:
                if request_id is None or not source.startswith(_MCP_WORKER_SOURCES):
                    return
                outcome = _outcome(event_type, raw)  # validated before it is kept
                self._apply_result(request_id, event_type, raw, outcome, stamp)
        except ValidationError as exc:
            logger.warning(
                "invalid %s record on %s skipped: %s",
                event_type,
                self._topic,
                str(exc).splitlines()[0][:200],
            )

    def _apply_step(self, key: tuple[str, str], number: int, raw: bytes, stamp: float) -> None:
        known = self._steps[key]
        if number in known:
            return
        known[number] = raw
        self._hold(("step", (key, number)), len(raw), stamp)

    def _apply_result(
        self, tool_request_id: str, event_type: str, raw: bytes, outcome: ToolOutcome, stamp: float
    ) -> None:
        if tool_request_id in self._results:
            return  # a rerun's reply: the first outcome stands
        self._results[tool_request_id] = (event_type, raw)
        self._hold(("result", tool_request_id), len(raw), stamp)
        for future in self._waiters.pop(tool_request_id, []):
            if not future.done():
                future.set_result(outcome)

    def _hold(self, entry: tuple[str, Any], size: int, stamp: float) -> None:
        size += _ENTRY_OVERHEAD
        self._held[entry] = (size, stamp)
        self._bytes += size
        horizon = self._clock() - self._window
        while self._held and (
            self._bytes > self._memory or next(iter(self._held.values()))[1] < horizon
        ):
            (kind, what), (held, _) = self._held.popitem(last=False)
            self._bytes -= held
            if kind == "result":
                self._results.pop(what, None)
            else:
                key, number = what
                steps = self._steps.get(key)
                if steps is not None:
                    steps.pop(number, None)
                    if not steps:
                        del self._steps[key]

    def held_bytes(self) -> int:
        """Bytes of records held (for metrics and health)."""
        return self._bytes
