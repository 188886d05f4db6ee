"""The active routing table: the routing file plus a client for every deployment.

A table is built (and validated) completely before it replaces the old one, so a
reload is one reference swap: requests in flight keep the table they started with.
Requests naming `provider/model` directly get a one-deployment table of their own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ferryman.contracts import ErrorCode, FerrymanError
from llm_worker.providers.port import ChatModel
from llm_worker.providers.resolver import ModelResolver
from llm_worker.routing.config import Deployment, Route, RoutingConfig

DIRECT_ALIAS = "direct"
"""The metrics label of requests that name `provider/model` instead of a route."""

_DIRECT_CACHE = 1024

MAX_DIRECT_MODEL = 256
"""Characters a directly requested `provider/model` may have (real names are far shorter):
per-model state is kept for such names, so their size is bounded too."""


@dataclass(frozen=True)
class RoutingTable:
    """A routing configuration with its clients, as one immutable unit."""

    config: RoutingConfig
    clients: Mapping[str, ChatModel]
    """Deployment name → the client that calls it."""
    version: str | None = None
    """The routing file's content hash (None without a file)."""
    owned_clients: tuple[ChatModel, ...] = field(default=())
    """Clients built for this table (dedicated endpoints or credentials), closed at stop."""


def build_table(
    config: RoutingConfig,
    resolver: ModelResolver,
    make_client: Callable[[Deployment], ChatModel | None],
    version: str | None = None,
) -> RoutingTable:
    """Resolve every deployment to a client.

    `make_client` builds a dedicated client for a deployment with its own endpoint or
    credentials (None: use the worker's client of that provider).

    Raises:
        ValueError: a deployment's provider is not configured on this worker, or its
            dedicated client cannot be built (e.g. its credentials are missing).
    """
    clients: dict[str, ChatModel] = {}
    owned: list[ChatModel] = []
    for name, deployment in config.deployments.items():
        try:
            dedicated = make_client(deployment)
        except (ValueError, RuntimeError) as exc:
            raise ValueError(f"deployment {name!r}: {exc}") from exc
        if dedicated is not None:
            clients[name] = dedicated
            owned.append(dedicated)
            continue
        client = resolver.providers.get(deployment.provider)
        if client is None:
            configured = ", ".join(sorted(resolver.providers))
            raise ValueError(
                f"deployment {name!r} uses provider {deployment.provider!r}, which is not"
                f" configured on this worker (configured: {configured})"
            )
        clients[name] = client
    return RoutingTable(config, clients, version, tuple(owned))


class DirectTables:
    """One-deployment tables for `provider/model` requests, cached (bounded)."""

    def __init__(self, resolver: ModelResolver) -> None:
        self._resolver = resolver
        self._tables: OrderedDict[str, RoutingTable] = OrderedDict()

    def get(self, model: str) -> RoutingTable:
        """The table whose only route, named `model`, serves `model`.

        Raises:
            FerrymanError: `invalid_request` when `model` is longer than `MAX_DIRECT_MODEL`
                or resolves to no configured provider.
        """
        if len(model) > MAX_DIRECT_MODEL:
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"model is {len(model)} characters long; at most {MAX_DIRECT_MODEL} are accepted",
            )
        table = self._tables.get(model)
        if table is not None:
            self._tables.move_to_end(model)
            return table
        client, model_name = self._resolver.resolve(model)
        key = f"{client.provider}/{model_name}"
        config = RoutingConfig.model_construct(
            deployments={key: Deployment(provider=client.provider, model=model_name)},
            routes={model: Route(deployments=[key])},
            tenants={},
        )
        table = RoutingTable(config, {key: client})
        self._tables[model] = table
        if len(self._tables) > _DIRECT_CACHE:
            self._tables.popitem(last=False)
        return table
