"""At-least-once Kafka consumption with many records in flight per partition.

Why our own engine instead of a FastStream subscriber: FastStream's concurrent
subscribers either auto-commit (at-most-once) or run one message at a time per
partition, and its `ack()` commits the consumer's whole position, past records
still in flight. LLM calls take seconds, so a worker must run hundreds of them
at once and still never commit past unfinished work. This engine runs on
aiokafka inside the FastStream app (see `ferryman_runtime.hosting`):

* every fetched record becomes a task; at most `max_in_flight` run at once;
  at the limit the consumer pauses its partitions (backpressure) but keeps
  polling, so the group never sees it as dead;
* with `key_ordered`, records of one key (per partition) run one at a time in
  offset order (`ferryman_runtime.key_order`);
* completion is tracked per partition (`PartitionOffsets`) and only the lowest
  unfinished offset is committed, soon after it advances;
* a handler that raises is retried with capped exponential backoff without
  committing; after `max_attempts` the record goes to `on_exhausted` (which
  dead-letters it) and only then counts as finished (`record_attempts`);
* a record aiokafka cannot decode is read raw and handed to `on_undecodable`,
  and its partition moves on (`ferryman_runtime.undecodable`);
* on rebalance, revoked partitions get a last commit of what is finished, and
  work on partitions that did not come back is cancelled, uncommitted
  (`ferryman_runtime.group_assignment`);
* the lag of the assigned partitions is refreshed in the background, never fatally
  (`ferryman_runtime.consumer_lag`);
* the fetch and commit loops are supervised: if one dies, `failure` is set,
  `failed` fires and `ready` turns false, so the host can exit non-zero;
* `stop()` stops fetching, lets in-flight work finish within a grace period,
  cancels the rest (it will be redelivered), commits and leaves the group.
"""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportUnknownArgumentType=false

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any

from aiokafka import (  # pyright: ignore[reportMissingTypeStubs]
    AIOKafkaConsumer,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import KafkaError  # pyright: ignore[reportMissingTypeStubs]

from ferryman_runtime.consumer_lag import LagTracker
from ferryman_runtime.group_assignment import GroupAssignment, is_group_member
from ferryman_runtime.in_flight import InFlight
from ferryman_runtime.log_throttle import quiet_kafka_client_logs
from ferryman_runtime.metrics import ConsumerMetrics
from ferryman_runtime.offsets import OffsetCommitter
from ferryman_runtime.record_attempts import (
    Backoff,
    ExhaustedHandler,
    RecordAttempts,
    RecordHandler,
    UndecodableHandler,
)
from ferryman_runtime.skip_undecodable import UndecodableSkipper

__all__ = ["ExhaustedHandler", "ParallelConsumer", "RecordHandler", "UndecodableHandler"]

logger = logging.getLogger(__name__)


class ParallelConsumer:
    """Consumes topics in a group, running up to `max_in_flight` records concurrently.

    Args:
        bootstrap_servers: comma-separated `host:port` list.
        topics: topics to subscribe to.
        group_id: the consumer group shared by all replicas.
        handler: called once per record (again on failure, with a higher attempt).
        max_in_flight: records processed at once by this process (records waiting for
            an earlier record of their key count too).
        metrics: where to count records, retries, hand-overs and commits.
        client_id: names this client in broker logs.
        retry_backoff: first and maximum delay between handler retries, seconds (also
            between retries of `on_exhausted` and `on_undecodable`).
        commit_interval: minimum seconds between two commits (they are coalesced).
        session_timeout_ms: the group session timeout (heartbeats every quarter of it).
        key_ordered: run records of one key (in one partition) one at a time, in offset
            order; records without a key never wait.
        max_attempts: handler calls per record before `on_exhausted` takes it over.
        on_exhausted: `(record, attempts, last_error)`, awaited after the last failed
            attempt (or at once for a non-retryable `FerrymanError`); retried until it
            succeeds, then the record is finished. None: retry the handler forever.
        on_undecodable: awaited with each record aiokafka cannot decode, then the
            record is finished; retried until it succeeds. None: such a record makes
            the consumer fail (see `failure`) instead of skipping it.
        client_options: extra `AIOKafkaConsumer` options (security, fetch sizes, ...).
        log_interval: seconds between two log lines of one repeated Kafka failure.
        final_commit_timeout: seconds `stop()` waits for its last commit.
        lag_interval: seconds between two refreshes of the consumer lag (`lag`).

    Raises:
        ValueError: `max_in_flight` is below 1, `max_attempts` below 1 or `lag_interval`
            not above 0.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topics: Iterable[str],
        group_id: str,
        handler: RecordHandler,
        max_in_flight: int,
        metrics: ConsumerMetrics,
        client_id: str = "ferryman",
        retry_backoff: tuple[float, float] = (0.5, 30.0),
        commit_interval: float = 0.2,
        session_timeout_ms: int = 10_000,
        key_ordered: bool = False,
        max_attempts: int = 5,
        on_exhausted: ExhaustedHandler | None = None,
        on_undecodable: UndecodableHandler | None = None,
        client_options: Mapping[str, Any] | None = None,
        log_interval: float = 30.0,
        final_commit_timeout: float = 10.0,
        lag_interval: float = 10.0,
    ) -> None:
        self._topics = list(topics)
        self._group_id = group_id
        self._metrics = metrics
        self._attempts = RecordAttempts(
            handler=handler,
            max_attempts=max_attempts,
            on_exhausted=on_exhausted,
            on_undecodable=on_undecodable,
            backoff=Backoff(*retry_backoff),
            metrics=metrics,
            connected=lambda: self.ready,
        )
        self._log_interval = log_interval
        self._final_commit_timeout = final_commit_timeout
        self._consumer_options: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "group_id": group_id,
            "client_id": client_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": session_timeout_ms,
            "heartbeat_interval_ms": max(session_timeout_ms // 4, 500),
            # aiokafka's 100 ms default retries metadata, coordinator lookups and fetches
            # ten times a second while a broker is down; half a second is plenty.
            "retry_backoff_ms": 500,
            **(client_options or {}),
        }
        self._consumer_or_none: AIOKafkaConsumer | None = None
        self._in_flight = InFlight(
            max_in_flight=max_in_flight,
            key_ordered=key_ordered,
            group_id=group_id,
            metrics=metrics,
            on_advance=lambda: self._committer.wanted.set(),
            on_bug=self._fail,
        )
        self._offsets = self._in_flight.partitions
        self._committer = OffsetCommitter(
            lambda: self._consumer,
            self._offsets,
            metrics,
            interval=commit_interval,
            log_interval=log_interval,
        )
        self._undecodable = UndecodableSkipper(
            lambda: self._consumer,
            self._in_flight,
            self._attempts,
            max_bytes=int(self._consumer_options.get("max_partition_fetch_bytes", 1 << 20)),
        )
        self.lag = LagTracker(
            lambda: self._consumer,
            self._offsets,
            interval=lag_interval,
            log_interval=log_interval,
        )
        """The lag of the assigned partitions, refreshed while the consumer runs."""
        self._group_assignment = GroupAssignment(
            lambda: self._consumer,
            self._topics,
            self._in_flight,
            self._committer,
            paused=lambda: self._paused,
            on_assigned=self.lag.reassigned,
        )
        self._fetch_task: asyncio.Task[None] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self._paused = False
        self._started = False
        self._stopping = False
        self._failure: BaseException | None = None
        self._failed = asyncio.Event()

    @property
    def _consumer(self) -> AIOKafkaConsumer:
        if self._consumer_or_none is None:
            raise RuntimeError("ParallelConsumer.start() was not called")
        return self._consumer_or_none

    @property
    def in_flight(self) -> int:
        """Records being processed right now."""
        return self._in_flight.count

    @property
    def peak_in_flight(self) -> int:
        """The most records ever processed at once by this consumer."""
        return self._in_flight.peak

    @property
    def assignment(self) -> list[TopicPartition]:
        """Partitions currently assigned to this consumer."""
        return sorted(self._offsets, key=lambda tp: (tp.topic, tp.partition))

    @property
    def ready(self) -> bool:
        """Whether this consumer is running and in its group.

        True exactly when: `start()` returned and `stop()` was not called; no loop
        failed (`failure` is None); the fetch loop is running; the group completed a
        join with this member (it may hold zero partitions when the group has more
        replicas than partitions); and the group coordinator is reachable and still
        knows this member: aiokafka forgets the coordinator when a request to it fails
        or no heartbeat succeeded for a session timeout, and the generation when the
        broker no longer recognises the member, until it rejoins.
        """
        if not self._started or self._stopping or self._failure is not None:
            return False
        if self._fetch_task is None or self._fetch_task.done() or not self._group_assignment.joined:
            return False
        return is_group_member(self._consumer)

    @property
    def failure(self) -> BaseException | None:
        """Why the fetch or commit loop died, or None while they run."""
        return self._failure

    @property
    def failed(self) -> asyncio.Event:
        """Set when the fetch or commit loop died; consumption has stopped for good."""
        return self._failed

    @property
    def generation(self) -> int:
        """The consumer group's generation as this member last joined it (-1 before).

        Every rebalance raises it, so work redelivered after a crash or a rebalance runs
        in a greater generation than the run it repeats (run ids sort by it first)."""
        coordinator = getattr(self._consumer_or_none, "_coordinator", None)
        generation = getattr(coordinator, "generation", -1)
        return generation if isinstance(generation, int) else -1

    def share(self) -> float:
        """This consumer's assigned partitions ÷ all partitions of its topics (0 before any).

        Replicas of a group hold disjoint partitions, so their shares sum to 1: a limit
        multiplied by each replica's share holds across replicas without shared state.
        """
        return self._group_assignment.share

    async def wait_assigned(self, timeout: float) -> bool:
        """Wait until the group assigned partitions (possibly none) at least once; return
        whether it did."""
        try:
            await asyncio.wait_for(self._group_assignment.assigned_once.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot for `/health`."""
        failure = self._failure
        totals = self.lag.totals()
        return {
            "group_id": self._group_id,
            "topics": self._topics,
            "ready": self.ready,
            "assigned": [f"{tp.topic}:{tp.partition}" for tp in self.assignment],
            "share": round(self._group_assignment.share, 4),
            "in_flight": self.in_flight,
            "peak_in_flight": self._in_flight.peak,
            "max_in_flight": self._in_flight.max_in_flight,
            "paused": self._paused,
            "lag": None if totals is None else totals[0],
            "backlog": None if totals is None else totals[1],
            "stopping": self._stopping,
            "failure": None if failure is None else f"{type(failure).__name__}: {failure}"[:500],
        }

    async def start(self) -> None:
        """Join the group and start fetching.

        Raises:
            aiokafka.errors.KafkaConnectionError: no broker answered.
        """
        quiet_kafka_client_logs(self._log_interval)
        # Created here, not in __init__: aiokafka binds to the running event loop.
        self._consumer_or_none = AIOKafkaConsumer(**self._consumer_options)
        await self._consumer.start()
        self._consumer.subscribe(topics=self._topics, listener=self._group_assignment)
        self._fetch_task = self._supervised(self._fetch_loop(), "ferryman-fetch")
        self._commit_task = self._supervised(self._committer.run(), "ferryman-commit")
        # Not supervised: the lag is advisory, its loop logs failures and carries on.
        self._lag_task = asyncio.create_task(self.lag.run(), name="ferryman-consumer-lag")
        self._started = True

    async def stop(self, grace_period: float) -> None:
        """Stop fetching, finish in-flight work within `grace_period` seconds, commit, leave.

        Work still running after the grace period is cancelled and not committed,
        so the group redelivers it after a restart. The last commit is abandoned after
        `final_commit_timeout` (e.g. during a broker outage); its records are redelivered.
        """
        if self._consumer_or_none is None:
            return
        self._stopping = True
        if self._lag_task is not None:
            self._lag_task.cancel()
            await asyncio.gather(self._lag_task, return_exceptions=True)
        if self._fetch_task is not None:
            self._fetch_task.cancel()
            await asyncio.gather(self._fetch_task, return_exceptions=True)
        with contextlib.suppress(KafkaError, AssertionError):
            self._consumer.pause(*self._consumer.assignment())
        pending = self._in_flight.tasks()
        if pending:
            logger.info("draining %d in-flight records (grace %.1fs)", len(pending), grace_period)
            _done, still_running = await asyncio.wait(pending, timeout=grace_period)
            if still_running:
                logger.warning("cancelling %d records after the grace period", len(still_running))
                for task in still_running:
                    task.cancel()
                await asyncio.gather(*still_running, return_exceptions=True)
        if self._commit_task is not None:
            self._commit_task.cancel()
            await asyncio.gather(self._commit_task, return_exceptions=True)
        try:
            await asyncio.wait_for(self._committer.commit(), self._final_commit_timeout)
        except TimeoutError:
            logger.warning("last commit abandoned after %.1fs", self._final_commit_timeout)
        await self._consumer.stop()

    def _supervised(self, loop: Awaitable[None], name: str) -> asyncio.Task[None]:
        task = asyncio.ensure_future(loop)
        task.set_name(name)
        task.add_done_callback(self._loop_ended)
        return task

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if self._stopping:
            return
        if task.cancelled():
            self._fail(RuntimeError(f"{task.get_name()} was cancelled"))
        else:
            self._fail(task.exception() or RuntimeError(f"{task.get_name()} returned"))

    def _fail(self, error: BaseException) -> None:
        if self._failure is not None:
            return
        self._failure = error
        logger.error(
            "consumer of %s failed; no more records will be fetched", self._topics, exc_info=error
        )
        self._failed.set()

    async def _fetch_loop(self) -> None:
        while True:
            try:
                batch = await self._poll()
            except UnicodeDecodeError as exc:
                await self._undecodable.skip(exc)
                continue
            for tp, records in batch.items():
                offsets = self._offsets.get(tp)
                if offsets is None:  # revoked while the batch was in hand
                    continue
                for record in records:
                    if not offsets.seen(record.offset):
                        settle = functools.partial(self._attempts.settle, record)
                        self._in_flight.dispatch(tp, offsets, record.offset, record.key, settle)

    async def _poll(self) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        free = self._in_flight.free
        if free <= 0:
            self._pause()
            self._in_flight.slot_freed.clear()
            # Poll even while paused so the group does not evict us (max.poll.interval).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._in_flight.slot_freed.wait(), timeout=1.0)
            return await self._consumer.getmany(timeout_ms=0)
        self._resume()
        return await self._consumer.getmany(timeout_ms=500, max_records=free)

    def _pause(self) -> None:
        if not self._paused:
            self._consumer.pause(*self._consumer.assignment())
            self._paused = True
            self._metrics.paused.set(1)
        else:  # partitions assigned while paused must be paused too
            self._consumer.pause(*self._consumer.assignment())

    def _resume(self) -> None:
        if self._paused:
            self._consumer.resume(*self._consumer.assignment())
            self._paused = False
            self._metrics.paused.set(0)
