"""Discovery debounces `list_changed`: a burst of notifications costs one listing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from ferryman.contracts.mcp import ToolChanged
from ferryman_runtime.resilience import Breakers
from ferryman_runtime.upstreams.stats import StatsBoard
from mcp_worker.catalog.catalog import Catalog
from mcp_worker.catalog.discovery import Discovery
from mcp_worker.servers.fleet import Fleet
from mcp_worker.servers.provisioning import Provisioner
from mcp_worker.servers.sandbox_launch import SandboxPolicy


class CountingDiscovery(Discovery):
    """Records refreshes instead of listing a server (the debounce is what is tested)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.refreshed: list[tuple[str, str]] = []
        self.done = asyncio.Event()

    async def refresh(self, server: str, timeout: float, scope: str = "") -> None:
        self.refreshed.append((server, scope))
        self.done.set()


async def _changed(_: ToolChanged) -> None:
    return None


def discovery() -> CountingDiscovery:
    fleet = Fleet(
        breakers=Breakers(CollectorRegistry(), fail_max=3, reset_timeout=1),
        stats=StatsBoard(),
        provisioner=Provisioner(Path("/nonexistent")),
        sandbox=SandboxPolicy(bwrap="bwrap", prlimit="prlimit"),
        on_list_changed=lambda *_: None,
        on_crash=lambda _: None,
    )
    return CountingDiscovery(
        Catalog(),
        fleet,
        publisher=lambda: None,
        topic="t",
        source="/test",
        debounce=0.05,
        status=lambda _: "healthy",
        on_changed=_changed,
    )


async def test_a_burst_of_list_changed_notifications_costs_one_listing() -> None:
    subject = discovery()

    for _ in range(100):
        subject.schedule("toolbox")
    subject.schedule("toolbox", "acme")
    await asyncio.wait_for(subject.done.wait(), 5)
    await asyncio.wait_for(asyncio.gather(*subject._pending.values()), 5)  # pyright: ignore[reportPrivateUsage]

    assert sorted(subject.refreshed) == [("toolbox", ""), ("toolbox", "acme")]
