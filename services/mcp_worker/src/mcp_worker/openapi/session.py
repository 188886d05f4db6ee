"""An API as a session of the fleet: its tools listed from the document, each call made by
the scope's `ApiCaller`. Nothing runs between calls, so there is nothing to crash: a
session ends only when it is closed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.shared.dispatcher import ProgressFnT

from ferryman.contracts import ErrorCode, FerrymanError
from mcp_worker.openapi.backend import ApiBackend, ApiLimits, load_backend
from mcp_worker.openapi.caller import ApiCaller
from mcp_worker.registry import ServerConfig

CACHED_META = "ferryman/cached"
"""`_meta` key of a call's result: its response came from the HTTP cache."""
STATUS_META = "ferryman/http-status"
"""`_meta` key of a call's result: the HTTP status the API answered."""


class ApiSession:
    """The session of one tenant scope on an API.

    Args:
        backend: the loaded API.
        scope: the tenant scope (its credentials and its cached responses).
    """

    def __init__(self, backend: ApiBackend, scope: str) -> None:
        self._backend = backend
        self._scope = scope
        self._caller: ApiCaller | None = None
        self.closed = asyncio.Event()
        self.failure: BaseException | None = None

    @property
    def alive(self) -> bool:
        """Not closed."""
        return not self.closed.is_set()

    @property
    def protocol_version(self) -> str:
        """`openapi` and the document's format version."""
        return f"openapi {self._backend.spec.openapi}"

    def why(self) -> str:
        """Why it ended (it ends only when closed)."""
        return "closed"

    async def open(self, timeout: float) -> None:
        """Nothing to open: the scope's credentials are resolved at its first call, so one
        tenant's unresolvable reference fails that tenant's calls, not the API."""

    async def close(self) -> None:
        """End the session (the API's clients belong to its backend)."""
        self.closed.set()

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any],
        *,
        timeout: float,
        progress: ProgressFnT | None = None,
        use_cache: bool = True,
    ) -> types.CallToolResult:
        """Call the operation `name`; an HTTP error the caller can act on is a result with
        `isError`.

        Raises:
            FerrymanError: bad arguments, unresolvable credentials (`auth`), a timeout, or
                the API failing after its retries.
        """
        caller = self._live()
        result = await caller.call(
            name, arguments, timeout, tenant=self._scope or None, use_cache=use_cache
        )
        return types.CallToolResult.model_validate(
            {
                "content": result.content,
                "structuredContent": result.structured,
                "isError": result.is_error,
                "_meta": {CACHED_META: result.cached, STATUS_META: result.status},
            }
        )

    async def list_tools(self, timeout: float) -> list[types.Tool]:
        """The API's operations as tools."""
        self._live()
        return self._backend.mcp_tools()

    async def list_resources(self, timeout: float) -> list[types.Resource]:
        """None: an API offers tools only."""
        return []

    async def list_prompts(self, timeout: float) -> list[types.Prompt]:
        """None: an API offers tools only."""
        return []

    async def read_resource(self, uri: str, timeout: float) -> types.ReadResourceResult:
        """An API has no resources.

        Raises:
            FerrymanError: `not_found`, always.
        """
        raise FerrymanError(
            ErrorCode.NOT_FOUND, f"API {self._backend.name!r} has no resources", retryable=False
        )

    async def get_prompt(
        self, name: str, arguments: dict[str, str], timeout: float
    ) -> types.GetPromptResult:
        """An API has no prompts.

        Raises:
            FerrymanError: `not_found`, always.
        """
        raise FerrymanError(
            ErrorCode.NOT_FOUND, f"API {self._backend.name!r} has no prompts", retryable=False
        )

    def _live(self) -> ApiCaller:
        if self.closed.is_set():
            raise FerrymanError(
                ErrorCode.UNAVAILABLE,
                f"API {self._backend.name!r} is not open",
                upstream=self._backend.name,
            )
        if self._caller is None:
            self._caller = self._backend.caller(self._scope)
        return self._caller


class ApiLoader:
    """Loads one API entry once (at its first session), shares it between the sessions of
    every tenant scope, and closes it with its server.

    Args:
        name: the registry name.
        config: its entry.
        base_dir: where a relative document path resolves (the registry file's folder).
        limits: response and cache sizes.
        environ: where credential references resolve.
        on_loaded: called with each backend loaded (the compatibility report, the catalog).
    """

    def __init__(
        self,
        name: str,
        config: ServerConfig,
        *,
        base_dir: Path,
        limits: ApiLimits,
        environ: Mapping[str, str],
        on_loaded: Callable[[ApiBackend], None],
    ) -> None:
        self._name = name
        self._config = config
        self._base_dir = base_dir
        self._limits = limits
        self._environ = environ
        self._on_loaded = on_loaded
        self._lock = asyncio.Lock()
        self.backend: ApiBackend | None = None

    async def session(self, scope: str) -> ApiSession:
        """A session of `scope` (not open yet), loading the API first if needed.

        Raises:
            FerrymanError: the document cannot be loaded (see `load_backend`).
        """
        async with self._lock:
            if self.backend is None:
                self.backend = await load_backend(
                    self._name,
                    self._config,
                    base_dir=self._base_dir,
                    limits=self._limits,
                    environ=self._environ,
                )
                self._on_loaded(self.backend)
        return ApiSession(self.backend, scope)

    async def close(self) -> None:
        """Close the loaded API's clients."""
        if self.backend is not None:
            await self.backend.close()
