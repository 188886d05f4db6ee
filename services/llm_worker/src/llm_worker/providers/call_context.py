"""Who a provider call is made for, visible to the adapter without changing the port.

`DeploymentCaller.call` sets a `CallContext` around each provider call; an adapter that
keeps provider-side state for later calls (Gemini's cached contents) reads it to know the
tenant and request the state belongs to and where to report what it costs. The
`ChatModel` port and the provider factory stay as they are: every adapter and test double
implements the port, and the factory runs before the usage recorder exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llm_worker.chat.accounting import UsageSink


@dataclass(frozen=True)
class CallContext:
    """The request a provider call is made for."""

    tenant: str | None
    """The request's tenant (None: it has none)."""
    request_id: str | None
    """The request's CloudEvents id."""
    usage: UsageSink | None = None
    """Where usage events the adapter makes later (cache storage) go; None: nowhere."""
    first_token_timeout: float | None = None
    """Seconds the call may wait for its first token (a cache the call relies on should
    outlive it)."""
    min_cache_tokens: int | None = None
    """The deployment's `prompt_cache.min_tokens`: the smallest prefix worth caching there
    (None: the provider's table)."""


_CURRENT: ContextVar[CallContext | None] = ContextVar("llm_worker_call_context", default=None)


def current_call() -> CallContext | None:
    """The context of the provider call running in this task, if one was set."""
    return _CURRENT.get()


@contextmanager
def call_context(context: CallContext) -> Iterator[CallContext]:
    """Make `context` the current call's for the duration of the block (tasks started in
    it inherit it)."""
    token = _CURRENT.set(context)
    try:
        yield context
    finally:
        _CURRENT.reset(token)
