"""What a client accepts from a reply topic, and in which order.

Three rules, applied per request (see docs/client.md):

1. Reply token: a request may carry a secret `replytoken`; the worker echoes it on every
   reply event, and a reply whose `ce_replytoken` differs is dropped (`reply_token_matches`).
2. Runs: every reply event carries the `runid` of the execution that produced it. A
   redelivered request runs again under a greater run id; the reader follows the greatest
   run id seen, is told to discard what earlier runs showed (`RunRestarted`), and events of
   smaller run ids are ignored. Events without a run id count as one run, older than any.
3. Order within a run: chunks are accepted once each, at the next index of the current
   attempt; a restart announces a newer attempt counting from 0 again; nothing is accepted
   after the terminal event (`ReplySequencer`).

The reply types of each request type are registered in a `ReplyRegistry`, so a facade for
another worker (MCP tools, storage) only registers its models.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, cast

from pydantic import BaseModel, ConfigDict, Field

from ferryman.contracts import (
    LLM_CHAT_CHUNK,
    LLM_CHAT_COMPLETED,
    LLM_CHAT_FAILED,
    LLM_CHAT_REQUESTED,
    LLM_CHAT_RESTARTED,
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatRequest,
    ChatRestarted,
)


class ReplyRole(StrEnum):
    """How the sequencer treats a reply event type."""

    CHUNK = "chunk"
    """Ordered by its `index` (and `attempt`, 1 when absent); each passed on once."""
    PROGRESS = "progress"
    """Unordered; passed on once per event id."""
    RESTART = "restart"
    """Announces a newer `attempt` within the run; earlier attempts' chunks are discarded."""
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
    """A registry knowing the LLM chat request and its replies."""
    registry = ReplyRegistry()
    registry.register(
        LLM_CHAT_REQUESTED,
        {
            LLM_CHAT_CHUNK: ReplyType(ChatChunk, ReplyRole.CHUNK),
            LLM_CHAT_RESTARTED: ReplyType(ChatRestarted, ReplyRole.RESTART),
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
    """How many chunks of the previous run's current attempt the reader was shown."""


class _Chunk(Protocol):
    @property
    def index(self) -> int: ...


class _Restart(Protocol):
    @property
    def attempt(self) -> int: ...


_CHAT_ROLES: dict[type[BaseModel], ReplyRole] = {
    ChatChunk: ReplyRole.CHUNK,
    ChatRestarted: ReplyRole.RESTART,
    ChatCompleted: ReplyRole.COMPLETED,
    ChatFailed: ReplyRole.FAILED,
}


class ReplySequencer:
    """Puts the reply events of one request in the order a reader should see them.

    `accept` returns what reaches the reader for each event received: nothing (a
    duplicate, an event of an older run or attempt, a chunk out of turn, anything after the
    terminal event), the event itself, or a `RunRestarted` followed by the event when the
    event opens a newer run.
    """

    def __init__(self) -> None:
        self.run_id: str | None = None
        """The run followed ("" for replies without a run id; None before the first)."""
        self.attempt = 1
        """The attempt whose chunks are accepted."""
        self.next_index = 0
        """The index of the next chunk accepted."""
        self.done = False
        """True once a terminal event was accepted."""
        self._seen_ids: set[str] = set()

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
                    discarded_chunks=self.next_index,
                )
            )
            self.run_id, self.attempt, self.next_index = run, 1, 0
            self._seen_ids.clear()
        if self._takes(event, role, event_id):
            shown.append(event)
        return shown

    def _takes(self, event: BaseModel, role: ReplyRole, event_id: str | None) -> bool:
        if role in TERMINAL_ROLES:
            self.done = True
            return True
        if role is ReplyRole.RESTART:
            attempt = cast(_Restart, event).attempt
            if attempt <= self.attempt:
                return False
            self.attempt, self.next_index = attempt, 0
            return True
        if role is ReplyRole.PROGRESS:
            if event_id is not None:
                if event_id in self._seen_ids:
                    return False
                self._seen_ids.add(event_id)
            return True
        attempt: int = getattr(event, "attempt", 1)
        if (attempt, cast(_Chunk, event).index) != (self.attempt, self.next_index):
            return False
        self.next_index += 1
        return True


def reply_token_matches(expected: str | None, received: str | None) -> bool:
    """Whether a reply carrying `received` as `ce_replytoken` answers a request sent with
    `expected` (always true when the request carried no token). Compared in constant time."""
    if expected is None:
        return True
    if received is None:
        return False
    return hmac.compare_digest(expected.encode(), received.encode())
