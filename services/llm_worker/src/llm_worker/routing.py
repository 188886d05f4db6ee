"""Routes: a model alias served by a weighted set of deployments, with fallback aliases.

Loaded from a YAML file (`LLM_WORKER_ROUTING_FILE`):

```yaml
deployments:
  openai-main: {provider: openai, model: gpt-4o-mini, weight: 3}
  azure-eu:    {provider: azure,  model: gpt4o,       weight: 1}
  haiku:       {provider: anthropic, model: claude-haiku-4-5}
routes:
  chat:
    deployments: [openai-main, azure-eu]
    fallbacks: [cheap]
  cheap:
    deployments: [haiku]
```

A request for `chat` tries its deployments in weighted-random order, skipping open
circuits, then the deployments of each fallback route in turn.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Deployment(_Strict):
    """One provider model that can serve requests."""

    provider: str
    model: str
    weight: float = Field(default=1.0, gt=0)


class Route(_Strict):
    """An alias: its deployments and the aliases to fall back to, in order."""

    deployments: list[str] = Field(min_length=1)
    fallbacks: list[str] = Field(default_factory=list)


class RoutingConfig(_Strict):
    """The routing file."""

    deployments: dict[str, Deployment] = Field(default_factory=dict)
    routes: dict[str, Route] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_references(self) -> RoutingConfig:
        for alias, route in self.routes.items():
            unknown = [d for d in route.deployments if d not in self.deployments]
            if unknown:
                raise ValueError(f"route {alias!r} names unknown deployments {unknown}")
            missing = [f for f in route.fallbacks if f not in self.routes]
            if missing:
                raise ValueError(f"route {alias!r} falls back to unknown routes {missing}")
        return self

    @classmethod
    def load(cls, path: Path) -> RoutingConfig:
        """Read and validate a routing file.

        Raises:
            ValueError: the file cannot be read, is not YAML, or is not a valid configuration.
        """
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"routing file {path}: {exc}") from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(f"routing file {path}: {exc}") from exc

    def candidates(
        self, alias: str, *, allowed: Callable[[str], bool], rng: random.Random | None = None
    ) -> Iterator[tuple[str, Deployment]]:
        """Yield `(name, deployment)` to try for `alias`, best first; each at most once.

        Within a route the order is weighted-random; deployments `allowed` rejects (open
        circuits) are skipped. Then each fallback route's candidates follow, depth first.
        """
        seen: set[str] = set()
        visited: set[str] = set()
        yield from self._walk(alias, allowed, rng or random.Random(), seen, visited)

    def _walk(
        self,
        alias: str,
        allowed: Callable[[str], bool],
        rng: random.Random,
        seen: set[str],
        visited: set[str],
    ) -> Iterator[tuple[str, Deployment]]:
        if alias in visited:
            return
        visited.add(alias)
        route = self.routes[alias]
        pool = [name for name in route.deployments if name not in seen]
        while pool:
            weights = [self.deployments[name].weight for name in pool]
            name = rng.choices(pool, weights=weights)[0]
            pool.remove(name)
            seen.add(name)
            if allowed(name):
                yield name, self.deployments[name]
        for fallback in route.fallbacks:
            yield from self._walk(fallback, allowed, rng, seen, visited)
