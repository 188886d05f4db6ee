"""A chat load through `FerrymanClient`, and an audit of the raw reply topic, for the
fault-matrix tests: what each request's client saw, and what every execution published."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from ferryman.client import FerrymanClient, wait_for_partitions
from ferryman.codec import header_value
from ferryman.contracts import (
    LLM_CHAT_CHUNK,
    LLM_CHAT_COMPLETED,
    ChatChunk,
    ChatCompleted,
)
from ferryman.replies import RunRestarted

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel"


@dataclass
class ClientView:
    """What the client showed for one request."""

    shown: str = ""
    """The text of the chunks shown since the last `RunRestarted`."""
    restarts: int = 0
    """`RunRestarted` events seen (reruns the client recognised)."""
    completed: ChatCompleted | None = None
    completions: int = 0
    """`ChatCompleted` events the client yielded (exactly one is right)."""
    error: str | None = None


class ChatLoad:
    """`count` chat requests of `model`, all in flight at once through one client.

    Args:
        client: the client (its reply topic is the test's own).
        count: requests.
        model: the `provider/model` asked.
        timeout: seconds each request may take.
    """

    def __init__(self, client: FerrymanClient, count: int, *, model: str, timeout: float) -> None:
        self._client = client
        self._model = model
        self._timeout = timeout
        self.texts = {client.new_request_id(): f"fault {n} {WORDS}" for n in range(count)}
        """The prompt of each request, by request id."""
        self.views = {request_id: ClientView() for request_id in self.texts}
        self._progress = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def completed(self) -> int:
        """Requests the client has a completed answer for."""
        return sum(view.completed is not None for view in self.views.values())

    def start(self) -> None:
        """Publish every request (each from its own task) and follow its replies."""
        self._tasks = [asyncio.create_task(self._run(rid)) for rid in self.texts]

    @property
    def finished(self) -> bool:
        """Every request ended (completed, failed or timed out)."""
        return bool(self._tasks) and all(task.done() for task in self._tasks)

    async def _run(self, request_id: str) -> None:
        view = self.views[request_id]
        request = {
            "model": self._model,
            "messages": [{"role": "user", "content": self.texts[request_id]}],
        }
        try:
            stream = self._client.chat_stream(request, request_id=request_id, timeout=self._timeout)
            async for event in stream:
                if isinstance(event, RunRestarted):
                    view.shown, view.restarts = "", view.restarts + 1
                elif isinstance(event, ChatChunk):
                    view.shown += event.delta.content or ""
                elif isinstance(event, ChatCompleted):
                    view.completed, view.completions = event, view.completions + 1
        except Exception as exc:  # counted as not completed, with why
            view.error = f"{type(exc).__name__}: {exc}"
        async with self._progress:
            self._progress.notify_all()

    async def wait_completed(self, count: int, timeout: float) -> None:
        """Wait until `count` requests completed at the client.

        Raises:
            TimeoutError: they did not within `timeout` seconds.
            AssertionError: every request ended, fewer of them completed.
        """
        async with self._progress:
            await asyncio.wait_for(
                self._progress.wait_for(lambda: self.completed >= count or self.finished),
                timeout,
            )
        assert self.completed >= count, self.summary()

    async def finish(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) for every request to end; cancel the rest."""
        _done, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def summary(self) -> str:
        """The client-side counts."""
        views = self.views.values()
        errors = Counter(view.error.split(":")[0] for view in views if view.error)
        return (
            f"requests={len(self.views)} completed={self.completed} "
            f"lost={sum(view.completed is None for view in views)} errors={dict(errors)} "
            f"client_reruns={sum(view.restarts for view in views)}"
        )


@dataclass
class Run:
    """The events one execution of a request published, in log order."""

    sequences: list[int] = field(default_factory=list)
    chunks: list[ChatChunk] = field(default_factory=list)
    terminals: list[tuple[str, bytes]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class ReplyAudit:
    """Every execution of every request, read from the reply topic; problems found."""

    runs: dict[str, dict[str, Run]]
    problems: list[str]

    def completed_contents(self, request_id: str) -> list[str]:
        """The content of each completed run of `request_id`."""
        contents: list[str] = []
        for run in self.runs.get(request_id, {}).values():
            for event_type, value in run.terminals:
                if event_type == LLM_CHAT_COMPLETED:
                    contents.append(ChatCompleted.model_validate_json(value).content)
        return contents

    @property
    def rerun_requests(self) -> int:
        """Requests executed more than once."""
        return sum(len(by_run) > 1 for by_run in self.runs.values())

    def summary(self) -> str:
        """The counts of executions."""
        runs = [len(by_run) for by_run in self.runs.values()]
        completions = [len(self.completed_contents(rid)) for rid in self.runs]
        return (
            f"requests_seen={len(self.runs)} executions={sum(runs)} "
            f"rerun_requests={self.rerun_requests} "
            f"completed_twice={sum(n > 1 for n in completions)} "
            f"never_completed={sum(n == 0 for n in completions)} problems={len(self.problems)}"
        )


def audit_replies(records: list[Any]) -> ReplyAudit:
    """Group reply records by request (`ce_correlationid`) and run (`ce_runid`) and check each
    run: ids `<runid>.<n>` counting 0, 1, 2… in log order, chunks indexed likewise, at most
    one terminal event, last, and a completed content equal to the run's chunks; and each
    request: its runs first appear in run-id order (a rerun sorts after the run it repeats,
    which is how a reader knows to follow it)."""
    runs: dict[str, dict[str, Run]] = defaultdict(dict)
    problems: list[str] = []
    for record in records:
        request_id = header_value(record.headers, "ce_correlationid") or "?"
        run_id = header_value(record.headers, "ce_runid") or ""
        event_id = header_value(record.headers, "ce_id") or ""
        event_type = header_value(record.headers, "ce_type") or ""
        run = runs[request_id].setdefault(run_id, Run())
        prefix, _, sequence = event_id.rpartition(".")
        if not run_id or prefix != run_id or not sequence.isdigit():
            run.problems.append(f"event id {event_id!r} is not '<runid>.<n>' of run {run_id!r}")
            continue
        run.sequences.append(int(sequence))
        if run.terminals:
            run.problems.append(f"{event_type} {event_id} after the terminal event")
        if event_type == LLM_CHAT_CHUNK:
            run.chunks.append(ChatChunk.model_validate_json(record.value))
        else:
            run.terminals.append((event_type, record.value))
    for request_id, by_run in runs.items():
        if list(by_run) != sorted(by_run):
            problems.append(f"{request_id}: runs appear out of run-id order: {list(by_run)}")
        for run_id, run in by_run.items():
            _check_run(run)
            problems += [f"{request_id} run {run_id}: {p}" for p in run.problems]
    return ReplyAudit(dict(runs), problems)


def _check_run(run: Run) -> None:
    if run.sequences != list(range(len(run.sequences))):
        run.problems.append(f"ids are not 0, 1, 2… in log order: {run.sequences}")
    indexes = [(chunk.attempt, chunk.index) for chunk in run.chunks]
    if indexes != [(1, n) for n in range(len(indexes))]:
        run.problems.append(f"chunks out of turn: {indexes}")
    if len(run.terminals) > 1:
        run.problems.append(f"{len(run.terminals)} terminal events")
    for event_type, value in run.terminals:
        if event_type != LLM_CHAT_COMPLETED:
            run.problems.append(f"terminal {event_type}: {value[:200]!r}")
            continue
        completed = ChatCompleted.model_validate_json(value)
        streamed = "".join(chunk.delta.content or "" for chunk in run.chunks)
        if completed.content != streamed or completed.chunk_count != len(run.chunks):
            run.problems.append(f"completed {completed.content!r} but streamed {streamed!r}")


def all_completed(request_ids: set[str]) -> Callable[[list[Any]], bool]:
    """A `read_topic` condition: a completed event of each of `request_ids` was read."""

    def done(records: list[Any]) -> bool:
        seen = {
            header_value(r.headers, "ce_correlationid")
            for r in records
            if header_value(r.headers, "ce_type") == LLM_CHAT_COMPLETED
        }
        return request_ids <= seen

    return done


async def record_count(bootstrap: str, topic: str) -> int:
    """Records ever written to `topic` (the sum of its partitions' end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = await wait_for_partitions(consumer, topic)
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return sum(ends.values())
    finally:
        await consumer.stop()


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition()` (off the event loop) every 0.1 s: worker processes' readiness has
    no event to wait on.

    Raises:
        AssertionError: it did not hold within `timeout` seconds.
    """
    started = time.monotonic()
    while not await asyncio.to_thread(condition):
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)
