"""Rate limits of tool calls per server and per tenant (the registry's `rate_limit` and
`tenant_rate_limit`), on an injected clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ferryman.contracts import ErrorCode, FerrymanError
from mcp_worker.execution.rate_limits import RateLimits
from mcp_worker.registry import Registry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def registry(**entry: Any) -> Registry:
    return Registry.model_validate({"mcpServers": {"api": {"command": "x", **entry}}})


async def admit(limits: RateLimits, tenant: str | None, timeout: float = 0.0) -> None:
    async with limits.admitted("api", tenant, timeout):
        pass


async def test_a_server_limit_refuses_past_its_budget_until_the_window_moves() -> None:
    clock, waited = Clock(), list[str]()
    limits = RateLimits(clock=clock, on_wait=waited.append)
    limits.configure(registry(rate_limit={"requests": 2, "window": 60}))

    await admit(limits, "a")
    await admit(limits, "b")
    with pytest.raises(FerrymanError) as refused:
        await admit(limits, "c")

    assert refused.value.code == ErrorCode.RATE_LIMITED
    assert refused.value.retryable
    assert refused.value.retry_after == pytest.approx(60)
    assert waited == ["api"]
    clock.now += 60
    await admit(limits, "c")


async def test_a_tenant_limit_holds_each_tenant_apart() -> None:
    clock = Clock()
    limits = RateLimits(clock=clock)
    limits.configure(registry(tenant_rate_limit={"requests": 1, "window": 10}))

    await admit(limits, "acme")
    await admit(limits, "globex")
    with pytest.raises(FerrymanError, match="tenant 'acme' on 'api'"):
        await admit(limits, "acme")


async def test_each_replica_enforces_its_share() -> None:
    limits = RateLimits(lambda: 0.5, clock=Clock())
    limits.configure(registry(rate_limit={"requests": 4}))

    await admit(limits, None)
    await admit(limits, None)
    with pytest.raises(FerrymanError):
        await admit(limits, None)


async def test_a_share_below_one_call_is_refused_without_a_wait() -> None:
    limits = RateLimits(lambda: 0.1, clock=Clock())
    limits.configure(registry(rate_limit={"requests": 4}))

    with pytest.raises(FerrymanError, match="never at this replica's share") as refused:
        await admit(limits, None, timeout=30)

    assert refused.value.retry_after is None


async def test_a_concurrency_limit_waits_for_a_release() -> None:
    limits = RateLimits()
    limits.configure(registry(rate_limit={"max_concurrent": 1}))
    release = asyncio.Event()
    holding = asyncio.Event()

    async def hold() -> None:
        async with limits.admitted("api", None, 1):
            holding.set()
            await release.wait()

    first = asyncio.create_task(hold())
    await asyncio.wait_for(holding.wait(), 5)
    second = asyncio.create_task(admit(limits, None, timeout=30))

    async def waiting() -> None:
        while limits.waits == 0:
            await asyncio.sleep(0)  # a yield to the waiting task, bounded below

    await asyncio.wait_for(waiting(), 5)
    assert not second.done()
    release.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert limits.waits == 1


async def test_a_reload_keeps_usage_and_drops_removed_servers() -> None:
    clock = Clock()
    limits = RateLimits(clock=clock)
    limits.configure(registry(rate_limit={"requests": 1, "window": 60}))
    await admit(limits, None)

    limits.configure(registry(rate_limit={"requests": 1, "window": 60}, timeout=5))
    with pytest.raises(FerrymanError):
        await admit(limits, None)
    limits.configure(Registry.model_validate({"mcpServers": {}}))
    await admit(limits, None)  # an unknown server has no limit
