"""What a request does with a deployment after one of its calls failed.

Three outcomes: call the same deployment again after a wait, leave it but come back to
it if nothing else can serve, or leave it for good. The rules (docs/llm-routing.md,
"Timeouts and restarts"):

- a `timeout` is never retried on the same deployment: a silent deployment is not
  waited on twice;
- a stream that failed after chunks were published is restarted on another deployment
  when one can serve, and on the same one (after the backoff) only when none can:
  every restart publishes the answer again, so it should go where it is likeliest to
  finish;
- a Retry-After is waited out on the same deployment when the route allows a wait that
  long (`retry.wait_retry_after`) and the deadline does; otherwise the request fails
  over at once and comes back to the deployment only if nothing else can serve;
- any other retryable failure is retried after backoff, within `per_deployment` calls,
  while the deployment's circuit is closed and the wait ends before the deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ferryman.contracts import ErrorCode, FerrymanError
from llm_worker.routing.plan import Skip


@dataclass(frozen=True)
class NextStep:
    """The request's next step with the deployment whose call failed."""

    retry_in: float | None = None
    """Call the same deployment again after this many seconds."""
    come_back: Skip | None = None
    """Otherwise: try other deployments first; this one may serve again after
    `come_back.retry_in` seconds if none can. None (and no `retry_in`): leave it for good."""


LEAVE = NextStep()
"""Leave the deployment for the rest of the request."""


@dataclass(frozen=True)
class FailedCall:
    """One failed call, as the rules see it."""

    error: FerrymanError
    calls_here: int
    """Calls this request made to the deployment, the failed one included."""
    published: bool
    """Whether the failed call had already published chunks."""


@dataclass(frozen=True)
class Allowance:
    """What the route, the deployment's circuit and the deadline allow."""

    per_deployment: int
    """Calls per request on one deployment."""
    circuit_closed: bool
    """Whether the deployment's circuit lets calls through now."""
    remaining: float
    """Seconds until the request's deadline (`math.inf`: none)."""
    wait_retry_after: float | None = None
    """The longest Retry-After waited out on the same deployment (None: never wait)."""


def next_step(failure: FailedCall, allowed: Allowance, backoff: Callable[[int], float]) -> NextStep:
    """Decide what to do with the deployment after `failure`.

    Args:
        failure: the failed call.
        allowed: the bounds of the route, the circuit and the deadline.
        backoff: seconds to wait after the given number of calls (jittered).
    """
    error = failure.error
    if not error.retryable or error.code is ErrorCode.TIMEOUT:
        return LEAVE
    if failure.calls_here >= allowed.per_deployment:
        return LEAVE
    if error.retry_after is not None:
        wait = error.retry_after
        waits = allowed.wait_retry_after is not None and wait <= allowed.wait_retry_after
        if waits and not failure.published and allowed.circuit_closed and wait < allowed.remaining:
            return NextStep(retry_in=wait)
        return NextStep(come_back=Skip("cooldown", wait))
    delay = backoff(failure.calls_here)
    if failure.published:
        return NextStep(come_back=Skip("restart", delay))
    if allowed.circuit_closed and delay < allowed.remaining:
        return NextStep(retry_in=delay)
    return LEAVE
