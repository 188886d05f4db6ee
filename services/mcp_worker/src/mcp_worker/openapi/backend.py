"""An API entry of the registry, loaded: its document (a file or a URL, pinned if the entry
says so), its tools, its HTTP clients (one plain, one caching), and a caller per tenant
scope with that scope's credentials."""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import anysqlite
import httpx2
import mcp_types as types

from ferryman.contracts import ErrorCode, FerrymanError
from mcp_worker.openapi.auth import ApiAuth, SchemeSecret, unsupported_schemes
from mcp_worker.openapi.cache import caching_client, memory_database
from mcp_worker.openapi.caller import ApiCaller
from mcp_worker.openapi.operations import ApiTools, OperationFilter, OperationTool, api_tools
from mcp_worker.openapi.spec import ApiSpec, load_spec
from mcp_worker.openapi.validation import ResponseValidation
from mcp_worker.references import RegistryError, resolve
from mcp_worker.registry import ServerConfig
from mcp_worker.registry_api import ApiCredential, OperationSelector

QUIET_LOGGERS = ("httpx2", "httpcore2")
"""HTTP client loggers held at WARNING: at INFO httpx2 logs every request's full URL, which
carries an API key given in the query."""

MAX_SPEC_BYTES = 32 * 1024 * 1024
"""A document larger than this is refused (a URL that streams forever cannot fill memory)."""


@dataclass(frozen=True)
class ApiLimits:
    """What every API shares: response bytes kept, the response cache's size."""

    max_response_bytes: int = 1024 * 1024
    cache_max_bytes: int = 64 * 1024 * 1024


class ApiBackend:
    """One loaded API entry.

    Args:
        name: the registry name.
        config: its entry.
        spec: its loaded document.
        source_digest: sha256 of the document file's bytes as read (None for a URL): an edit
            of the file changes it.
        limits: response and cache sizes.
        environ: where credential references resolve.
        cache_database: where its response cache is kept (None: no cache).

    Raises:
        FerrymanError: the entry's tool names or base URL are unusable (`invalid_request`).
    """

    def __init__(
        self,
        name: str,
        config: ServerConfig,
        spec: ApiSpec,
        *,
        source_digest: str | None,
        limits: ApiLimits,
        environ: Mapping[str, str],
        cache_database: anysqlite.Connection | None = None,
    ) -> None:
        for quiet in QUIET_LOGGERS:
            logging.getLogger(quiet).setLevel(logging.WARNING)
        self.name = name
        self.config = config
        self.spec = spec
        self.source_digest = source_digest
        self._limits = limits
        self._environ = environ
        try:
            generated = entry_tools(spec, config)
        except ValueError as exc:
            raise _refused(name, str(exc)) from None
        self.tools: dict[str, OperationTool] = generated.by_name()
        self.warnings = generated.warnings + tuple(unsupported_schemes(_schemes(spec)))
        self.base_url = _base_url(name, config, spec)
        self.validation = ResponseValidation(spec) if config.output_validation != "off" else None
        self.invalid_responses = 0
        """Responses that did not match the document (counted whatever the policy)."""
        # Each call's deadline bounds it; a host that never answers fails at connect time.
        timeout = httpx2.Timeout(None, connect=config.connect_timeout)
        self.client = httpx2.AsyncClient(follow_redirects=False, timeout=timeout)
        self.cache_client = (
            caching_client(cache_database, max_size=limits.cache_max_bytes, timeout=timeout)
            if cache_database is not None
            else None
        )

    def mcp_tools(self) -> list[types.Tool]:
        """The operations as MCP tool definitions (what the catalog lists and hashes)."""
        return [
            types.Tool(
                name=tool.name,
                description=tool.description or None,
                input_schema=tool.input_schema,
                output_schema=tool.output_schema,
                annotations=types.ToolAnnotations(
                    read_only_hint=tool.read_only,
                    idempotent_hint=tool.idempotent,
                    destructive_hint=_destructive(tool),
                    open_world_hint=True,
                ),
            )
            for tool in self.tools.values()
        ]

    def caller(self, scope: str) -> ApiCaller:
        """A caller with the credentials of the tenant scope (`""`: the entry's own).

        Raises:
            FerrymanError: `auth` when a credential reference cannot be resolved.
        """
        credentials = dict(self.config.credentials)
        for pattern, overrides in self.config.tenant_credentials.items():
            if scope and fnmatch.fnmatchcase(scope, pattern):
                credentials.update(overrides)
                break
        try:
            secrets = {name: self._secret(c) for name, c in credentials.items()}
        except RegistryError as exc:
            raise FerrymanError(
                ErrorCode.AUTH, f"server {self.name!r}: {exc}", retryable=False, upstream=self.name
            ) from None
        auth = ApiAuth(
            self.name, _schemes(self.spec), secrets, base_url=self.base_url, client=self.client
        )
        return ApiCaller(
            self.name,
            self.tools,
            base_url=self.base_url,
            auth=auth,
            client=self.client,
            max_bytes=self._limits.max_response_bytes,
            retries=self.config.retries,
            cache_client=self.cache_client,
            cache_mode=self.config.api_cache_mode,
            cache_ttl=self.config.cache.ttl,
            response_validation=self.config.output_validation,
            validation=self.validation,
            on_invalid=self._invalid,
        )

    def _invalid(self, tool: str, problems: list[str]) -> None:
        self.invalid_responses += 1

    def _secret(self, credential: ApiCredential) -> SchemeSecret:
        def value(reference: str | None) -> str | None:
            if reference is None:
                return None
            return resolve(reference, self._environ).get_secret_value()

        return SchemeSecret(
            value=value(credential.value),
            username=value(credential.username),
            password=value(credential.password),
            client_id=value(credential.client_id),
            client_secret=value(credential.client_secret),
        )

    async def close(self) -> None:
        """Close its HTTP clients."""
        await self.client.aclose()
        if self.cache_client is not None:
            await self.cache_client.aclose()


async def load_backend(
    name: str,
    config: ServerConfig,
    *,
    base_dir: Path,
    limits: ApiLimits,
    environ: Mapping[str, str],
) -> ApiBackend:
    """Load the entry's document (file or URL) and check it against the entry's pins.

    Raises:
        FerrymanError: the document cannot be read, is not valid OpenAPI 3.0/3.1, or is not
            the pinned version (`unavailable`, not retryable: the entry must change).
    """
    source = config.spec or ""
    try:
        if urlsplit(source).scheme in ("http", "https"):
            data = await _fetch(source, config.connect_timeout)
            spec = await asyncio.to_thread(
                load_spec,
                data,
                source=_without_query(source),
                fetch_url=lambda url: _fetch_sync(url, config.connect_timeout),
                base_url=source,
            )
            digest = None
        else:
            path = Path(source) if Path(source).is_absolute() else base_dir / source
            data = await asyncio.to_thread(_read, path)
            spec = await asyncio.to_thread(load_spec, data, source=source, base_dir=path.parent)
            digest = hashlib.sha256(data).hexdigest()
    except (OSError, ValueError, httpx2.HTTPError) as exc:
        raise _refused(name, _why(exc)) from None
    if config.spec_version is not None and spec.version != config.spec_version:
        raise _refused(
            name, f"the document is version {spec.version!r}, pinned: {config.spec_version!r}"
        )
    if config.spec_digest is not None and not spec.digest.startswith(config.spec_digest):
        raise _refused(
            name, f"the document's hash is {spec.digest[:16]}…, pinned: {config.spec_digest}"
        )
    cached = config.api_cache_mode != "off" and limits.cache_max_bytes > 0
    database = await memory_database() if cached else None
    try:
        return ApiBackend(
            name,
            config,
            spec,
            source_digest=digest,
            limits=limits,
            environ=environ,
            cache_database=database,
        )
    except BaseException:
        if database is not None:
            await database.close()
        raise


def entry_tools(spec: ApiSpec, config: ServerConfig) -> ApiTools:
    """The tools of `spec` as the entry selects and names them.

    Raises:
        ValueError: a tool name override is not a valid tool name.
    """
    selection = config.operations
    return api_tools(
        spec,
        include=_filter(selection.include),
        exclude=_filter(selection.exclude),
        name_overrides=config.tool_names,
    )


def file_digest(config: ServerConfig, base_dir: Path) -> str | None:
    """sha256 of the entry's document file now (None: a URL, or unreadable)."""
    source = config.spec or ""
    if urlsplit(source).scheme in ("http", "https"):
        return None
    path = Path(source) if Path(source).is_absolute() else base_dir / source
    try:
        return hashlib.sha256(_read(path)).hexdigest()
    except OSError:
        return None


def _read(path: Path) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise ValueError(f"{path.name} is larger than {MAX_SPEC_BYTES} bytes")
    return data


async def _fetch(url: str, timeout: float) -> bytes:
    async with (
        httpx2.AsyncClient(timeout=timeout, follow_redirects=True) as client,
        client.stream("GET", url) as response,
    ):
        _check_status(url, response)
        data = bytearray()
        async for chunk in response.aiter_bytes():
            data += chunk
            _check_size(url, data)
        return bytes(data)


def _fetch_sync(url: str, timeout: float) -> bytes:
    with (
        httpx2.Client(timeout=timeout, follow_redirects=True) as client,
        client.stream("GET", url) as response,
    ):
        _check_status(url, response)
        data = bytearray()
        for chunk in response.iter_bytes():
            data += chunk
            _check_size(url, data)
        return bytes(data)


def _check_status(url: str, response: httpx2.Response) -> None:
    if response.status_code != 200:
        raise ValueError(f"fetching {_without_query(url)} answered HTTP {response.status_code}")


def _check_size(url: str, data: bytearray) -> None:
    if len(data) > MAX_SPEC_BYTES:
        raise ValueError(f"{_without_query(url)} is larger than {MAX_SPEC_BYTES} bytes")


def _without_query(url: str) -> str:
    return urlsplit(url)._replace(query="", fragment="").geturl()


def _base_url(name: str, config: ServerConfig, spec: ApiSpec) -> str:
    if config.base_url is not None:
        return config.base_url
    url = spec.server_url
    if url is None:
        raise _refused(name, "the document names no server: give base_url")
    servers: list[Any] = spec.document.get("servers") or []
    variables: dict[str, Any] = servers[0].get("variables") or {}
    for variable, definition in variables.items():
        url = url.replace("{" + variable + "}", str(definition.get("default", "")))
    source = config.spec or ""
    if urlsplit(url).scheme not in ("http", "https"):
        if urlsplit(source).scheme in ("http", "https"):
            return urljoin(source, url)  # relative to where the document came from
        raise _refused(name, f"the document's server {url!r} is not an http(s) URL: give base_url")
    return url


def _destructive(tool: OperationTool) -> bool | None:
    """DELETE is; a read is not; a POST/PATCH is unknown (MCP then assumes it may be)."""
    if tool.method == "DELETE":
        return True
    return False if tool.read_only else None


def _schemes(spec: ApiSpec) -> dict[str, Any]:
    components: dict[str, Any] = spec.document.get("components") or {}
    return components.get("securitySchemes") or {}


def _filter(selector: OperationSelector | None) -> OperationFilter | None:
    if selector is None:
        return None
    return OperationFilter(
        tags=frozenset(selector.tags),
        paths=tuple(selector.paths),
        methods=frozenset(selector.methods),
    )


def _why(exc: BaseException) -> str:
    if isinstance(exc, httpx2.HTTPError):
        return f"the document could not be fetched ({type(exc).__name__})"
    if isinstance(exc, OSError):
        return f"the document could not be read ({type(exc).__name__}: {exc.strerror or exc})"
    return str(exc)[:500]


def _refused(name: str, why: str) -> FerrymanError:
    return FerrymanError(
        ErrorCode.UNAVAILABLE,
        f"API {name!r} cannot be served: {why}",
        retryable=False,
        upstream=name,
    )
