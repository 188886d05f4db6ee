"""Which deployment a request tries next: balancing within a route, then its fallbacks.

A `AttemptPlan` is made per request and asked for one candidate at a time, so every pick
sees the current state: calls in flight, latency averages, open circuits, Retry-After
cooldowns and quotas. Deployments that cannot be used now are skipped and remembered
with the reason, so the caller can wait for the soonest one instead of failing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ferryman_runtime.upstreams.stats import StatsBoard
from llm_worker.routing.config import Deployment, Route, RoutingConfig, Strategy


@dataclass(frozen=True)
class Candidate:
    """A deployment to try, and the route that offered it."""

    name: str
    deployment: Deployment
    route: str
    route_config: Route


@dataclass
class Skip:
    """Why a deployment was passed over, and when it may be usable again."""

    reason: str
    """`circuit_open`, `cooldown` (Retry-After), `quota`, or `restart` (its stream failed
    after chunks were published: it restarts the answer only if nothing else can)."""
    retry_in: float
    """Seconds until it may be usable (`math.inf`: not during this request)."""


@dataclass
class AttemptPlan:
    """The candidates of one request for `alias`, picked lazily.

    Args:
        config: the routing configuration the request started with (a reload never
            changes it mid-request).
        alias: the requested route.
        stats: per-deployment load and latency (for the balancing strategies).
        gate: returns None when a deployment may be called now (and, when it says so,
            holds its quota for the caller), or a `Skip`.
        rng: randomness for weighted picks.
    """

    config: RoutingConfig
    alias: str
    stats: StatsBoard
    gate: Callable[[str], Skip | None]
    rng: random.Random = field(default_factory=random.Random)
    skipped: dict[str, Skip] = field(default_factory=dict)
    """Deployments passed over by the last picks (cleared by `reopen`)."""
    _routes: list[str] = field(default_factory=list)
    _visited: set[str] = field(default_factory=set)
    _done: set[str] = field(default_factory=set)
    _excluded: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._routes = [self.alias]

    def next(self) -> Candidate | None:
        """The next deployment to try, or None when every route is exhausted now."""
        while self._routes:
            alias = self._routes[0]
            route = self.config.routes[alias]
            if alias not in self._visited:
                self._visited.add(alias)
                self._routes[1:1] = [f for f in route.fallbacks if f not in self._visited]
            pool = [
                name
                for name in route.deployments
                if name not in self._done and name not in self._excluded
            ]
            for name in self._ordered(pool, route.strategy):
                skip = self.gate(name)
                if skip is None:
                    self._done.add(name)
                    return Candidate(name, self.config.deployments[name], alias, route)
                self.skipped[name] = skip
                self._done.add(name)
            self._routes.pop(0)
        return None

    def exclude(self, name: str) -> None:
        """Never offer `name` again in this request (e.g. it failed for good)."""
        self._excluded.add(name)

    def divert(self, alias: str) -> None:
        """Continue with route `alias` (and its fallbacks) instead of what was left."""
        self._routes = [alias]
        self._visited.discard(alias)

    def reopen(self) -> float:
        """Start over with the deployments that were only skipped; return the shortest wait.

        Returns:
            Seconds until the soonest skipped deployment may be usable (`math.inf` when
            none will be during this request).
        """
        wait = min((s.retry_in for s in self.skipped.values()), default=math.inf)
        self._done -= set(self.skipped)
        self.skipped.clear()
        self._routes = [self.alias]
        self._visited.clear()
        return wait

    def _ordered(self, pool: list[str], strategy: Strategy) -> list[str]:
        if len(pool) < 2:
            return pool
        weights = {name: self.config.deployments[name].weight for name in pool}
        order = _weighted_order(pool, weights, self.rng)
        if strategy == "least_in_flight":
            order.sort(key=lambda name: self.stats.get(name).in_flight)
        elif strategy == "lowest_latency":
            # Untried deployments first (0), so every deployment gets a latency sample.
            order.sort(key=lambda name: self.stats.get(name).latency_ewma or 0.0)
        return order  # sorts are stable: ties keep the weighted-random order


def _weighted_order(pool: list[str], weights: dict[str, float], rng: random.Random) -> list[str]:
    """A weighted random permutation (each next pick proportional to its weight)."""
    # Efraimidis-Spirakis: sort by u^(1/w), one pass instead of repeated weighted draws.
    keyed = [(rng.random() ** (1.0 / weights[name]), name) for name in pool]
    keyed.sort(reverse=True)
    return [name for _, name in keyed]
