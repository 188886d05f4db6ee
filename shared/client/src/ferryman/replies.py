"""What a client accepts from a reply topic, and in which order.

Three rules, applied per request (see docs/client.md):

1. Reply token: a request may carry a secret `replytoken`; the worker echoes it on every
   reply event, and a reply whose `ce_replytoken` differs is dropped (`reply_token_matches`).
2. Runs: every reply event carries the `runid` of the execution that produced it. A
   redelivered request runs again under a greater run id; the reader follows the greatest
   run id seen, is told to discard what earlier runs showed (`RunRestarted`), and events of
   smaller run ids are ignored. Events without a run id count as one run, older than any.
3. Order within a run: chunks are accepted once each, at the next index of the current
   attempt of their step (a tool loop's model turn; 0 without one); a restart announces a
   newer attempt of one step, counting from 0 again (the chunks of earlier steps stand);
   nothing is accepted after the terminal event (`ReplySequencer`).

The reply types of each request type are registered in a `ReplyRegistry`, so a facade for
another worker (MCP tools, storage) only registers its models.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, cast

from pydantic import BaseModel, ConfigDict, Field

from ferryman.contracts import (
    LLM_CHAT_CHUNK,
    LLM_CHAT_COMPLETED,
    LLM_CHAT_FAILED,
    LLM_CHAT_PROGRESS,
    LLM_CHAT_REQUESTED,
    LLM_CHAT_RESTARTED,
    LLM_CHAT_TOOL_CALLED,
    LLM_CHAT_TOOL_RESULT,
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatProgress,
    ChatRequest,
    ChatRestarted,
    ToolCallFinished,
    ToolCallStarted,
)


class ReplyRole(StrEnum):
    """How the sequencer treats a reply event type."""

    CHUNK = "chunk"
    """Ordered by its `index` within its `step` (0 when absent) and `attempt` (1 when
    absent); each passed on once."""
    PROGRESS = "progress"
    """Unordered; passed on once per event id."""
    RESTART = "restart"
    """Announces a newer `attempt` of its `step` (0 when absent) within the run; that step's
    chunks of earlier attempts are discarded."""
    COMPLETED = "completed"
    """The terminal success."""
    FAILED = "failed"
    """The terminal failure; its payload has an `error` (`ErrorInfo`)."""


TERMINAL_ROLES = frozenset({ReplyRole.COMPLETED, ReplyRole.FAILED})


@dataclass(frozen=True)
class ReplyType:
    """One reply event type: the pydantic model of its data, and its role."""

    model: type[BaseModel]
    role: ReplyRole


@dataclass(frozen=True)
class RequestKind:
    """A request event type: the model of its data and the reply types it is answered with."""

    request_model: type[BaseModel] | None
    replies: Mapping[str, ReplyType]


class ReplyRegistry:
    """Maps request event types to their request model and reply types."""

    def __init__(self) -> None:
        self._kinds: dict[str, RequestKind] = {}

    def register(
        self,
        request_type: str,
        replies: Mapping[str, ReplyType],
        *,
        request_model: type[BaseModel] | None = None,
    ) -> None:
        """Register (or replace) a request type.

        Raises:
            ValueError: `replies` has no terminal type (a request could never finish).
        """
        if not any(reply.role in TERMINAL_ROLES for reply in replies.values()):
            raise ValueError(f"{request_type}: replies need a completed or failed type")
        self._kinds[request_type] = RequestKind(request_model, dict(replies))

    def kind(self, request_type: str) -> RequestKind:
        """Return the registration of `request_type`.

        Raises:
            LookupError: the type was never registered.
        """
        try:
            return self._kinds[request_type]
        except KeyError:
            raise LookupError(
                f"no reply types registered for {request_type!r}; call ReplyRegistry.register"
            ) from None


def default_registry() -> ReplyRegistry:
    """A registry knowing the LLM chat request and its replies (tool-loop events included)."""
    registry = ReplyRegistry()
    registry.register(
        LLM_CHAT_REQUESTED,
        {
            LLM_CHAT_CHUNK: ReplyType(ChatChunk, ReplyRole.CHUNK),
            LLM_CHAT_RESTARTED: ReplyType(ChatRestarted, ReplyRole.RESTART),
            LLM_CHAT_PROGRESS: ReplyType(ChatProgress, ReplyRole.PROGRESS),
            LLM_CHAT_TOOL_CALLED: ReplyType(ToolCallStarted, ReplyRole.PROGRESS),
            LLM_CHAT_TOOL_RESULT: ReplyType(ToolCallFinished, ReplyRole.PROGRESS),
            LLM_CHAT_COMPLETED: ReplyType(ChatCompleted, ReplyRole.COMPLETED),
            LLM_CHAT_FAILED: ReplyType(ChatFailed, ReplyRole.FAILED),
        },
        request_model=ChatRequest,
    )
    return registry


class RunRestarted(BaseModel):
    """Yielded by the client (it is not a wire event) when a newer run of the request
    appears: discard everything shown for the request so far; the new run's events follow,
    its chunks counting from index 0."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    """The run followed from now on."""
    previous_run_id: str | None
    """The run given up (None for replies of a worker that sends no run id)."""
    discarded_chunks: int = Field(ge=0)
    """How many chunks of the previous run the reader was shown (the current attempt of
    every step)."""


class _Chunk(Protocol):
    @property
    def index(self) -> int: ...


class _Restart(Protocol):
    @property
    def attempt(self) -> int: ...


_CHAT_ROLES: dict[type[BaseModel], ReplyRole] = {
    ChatChunk: ReplyRole.CHUNK,
    ChatRestarted: ReplyRole.RESTART,
    ChatProgress: ReplyRole.PROGRESS,
    ToolCallStarted: ReplyRole.PROGRESS,
    ToolCallFinished: ReplyRole.PROGRESS,
    ChatCompleted: ReplyRole.COMPLETED,
    ChatFailed: ReplyRole.FAILED,
}


@dataclass
class _StepStream:
    """Where the chunks of one step (a tool loop's model turn) stand."""

    attempt: int
    """The attempt whose chunks are accepted."""
    next_index: int = 0
    """The index of the next chunk accepted."""


@dataclass
class _Run:
    steps: dict[int, _StepStream] = field(default_factory=dict[int, _StepStream])
    announced: int = 1
    """The greatest attempt a restart announced in the run (1 before any)."""
    seen_ids: set[str] = field(default_factory=set[str])


class ReplySequencer:
    """Puts the reply events of one request in the order a reader should see them.

    `accept` returns what reaches the reader for each event received: nothing (a
    duplicate, an event of an older run or attempt, a chunk out of turn, anything after the
    terminal event), the event itself, or a `RunRestarted` followed by the event when the
    event opens a newer run.

    Chunks are sequenced per step (`step`, 0 when absent): each step counts its indexes from
    0, and a restart of step k discards only step k's chunks of earlier attempts. A step's
    first chunk (index 0) may carry attempt 1 or any attempt a restart of the run already
    announced, so a worker may count attempts per step or across the request.
    """

    def __init__(self) -> None:
        self.run_id: str | None = None
        """The run followed ("" for replies without a run id; None before the first)."""
        self.done = False
        """True once a terminal event was accepted."""
        self._run = _Run()

    @property
    def step(self) -> int:
        """The latest step of the current run (0 before any chunk)."""
        return max(self._run.steps, default=0)

    @property
    def attempt(self) -> int:
        """The attempt whose chunks are accepted in the latest step."""
        stream = self._run.steps.get(self.step)
        return 1 if stream is None else stream.attempt

    @property
    def next_index(self) -> int:
        """The index of the next chunk accepted in the latest step."""
        stream = self._run.steps.get(self.step)
        return 0 if stream is None else stream.next_index

    @property
    def shown_chunks(self) -> int:
        """Chunks of the current run passed on and not discarded by a restart since."""
        return sum(stream.next_index for stream in self._run.steps.values())

    def accept(
        self,
        event: BaseModel,
        role: ReplyRole | None = None,
        *,
        run_id: str | None = None,
        event_id: str | None = None,
    ) -> list[BaseModel]:
        """Return what of `event` reaches the reader, in order, and advance past it.

        `role` may be left out for the LLM chat models; `event_id` (the `ce_id`) is needed
        only to recognise a repeated `PROGRESS` event.

        Raises:
            TypeError: `role` is missing and `event` is not an LLM chat reply.
        """
        role = role or _CHAT_ROLES.get(type(event))
        if role is None:
            raise TypeError(f"give the role of a {type(event).__name__} reply")
        if self.done:
            return []
        run = run_id or ""
        shown: list[BaseModel] = []
        if self.run_id is None:
            self.run_id = run
        elif run < self.run_id:
            return []
        elif run > self.run_id:
            shown.append(
                RunRestarted(
                    run_id=run,
                    previous_run_id=self.run_id or None,
                    discarded_chunks=self.shown_chunks,
                )
            )
            self.run_id, self._run = run, _Run()
        if self._takes(event, role, event_id):
            shown.append(event)
        return shown

    def _takes(self, event: BaseModel, role: ReplyRole, event_id: str | None) -> bool:
        if role in TERMINAL_ROLES:
            self.done = True
            return True
        run = self._run
        if role is ReplyRole.PROGRESS:
            if event_id is not None:
                if event_id in run.seen_ids:
                    return False
                run.seen_ids.add(event_id)
            return True
        step: int = getattr(event, "step", None) or 0
        stream = run.steps.get(step)
        if role is ReplyRole.RESTART:
            attempt = cast(_Restart, event).attempt
            if stream is not None and attempt <= stream.attempt:
                return False
            run.steps[step] = _StepStream(attempt)
            run.announced = max(run.announced, attempt)
            return True
        attempt = getattr(event, "attempt", 1)
        index = cast(_Chunk, event).index
        if stream is None:
            if index != 0 or attempt > run.announced:
                return False
            stream = run.steps[step] = _StepStream(attempt)
        if (attempt, index) != (stream.attempt, stream.next_index):
            return False
        stream.next_index += 1
        return True


def reply_token_matches(expected: str | None, received: str | None) -> bool:
    """Whether a reply carrying `received` as `ce_replytoken` answers a request sent with
    `expected` (always true when the request carried no token). Compared in constant time."""
    if expected is None:
        return True
    if received is None:
        return False
    return hmac.compare_digest(expected.encode(), received.encode())
