"""The server registry file: the `mcpServers` format users already have from Claude Desktop
and VS Code, plus Ferryman's keys (tenants, tool filters, timeouts, concurrency, caching,
sandboxing, packages, credentials by reference).

```yaml
mcpServers:
  time:
    command: mcp-server-time          # stdio (Claude Desktop form)
    args: ["--local-timezone", "UTC"]
    tenants: ["acme"]                 # Ferryman keys from here on
    tools: {deny: ["set_*"]}
  search:
    type: http                        # streamable HTTP (VS Code form)
    url: https://search.example/mcp
    headers: {Authorization: "env:SEARCH_TOKEN"}
  petstore@1:
    type: openapi                     # an HTTP API: each operation is a tool
    spec: specs/petstore-v1.yaml      # a path (relative to this file) or a URL
    credentials: {api_key: {value: "env:PETSTORE_KEY"}}
```

Credentials are references, never inline: `env:VAR` (the worker's environment) or
`file:/path` (a mounted secret). A header or environment variable that carries a credential
(by its name) must be a reference, so a registry file can be committed and shown safely.
"""

from __future__ import annotations

import fnmatch
import json
import re
from typing import Any, Literal, Self

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ferryman.contracts.mcp import AccessRule, ServerName
from mcp_worker.references import RegistryError, is_reference
from mcp_worker.registry_api import ApiCredential, OperationSelection, RateLimit
from mcp_worker.servers.sandbox import SandboxProfile

_SECRET_NAME = re.compile(r"(?i)(authorization|api[-_]?key|token|secret|password|passwd|cookie)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ToolFilter(_Strict):
    """Which tools of a server are offered (`fnmatch` patterns; deny wins)."""

    allow: list[str] = Field(default_factory=lambda: ["*"])
    deny: list[str] = Field(default_factory=list[str])

    def permits(self, tool: str) -> bool:
        """Whether `tool` is offered."""
        if any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.deny):
            return False
        return any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.allow)


class CachePolicy(_Strict):
    """Result caching: `auto` caches tools annotated read-only or idempotent.

    An API (`type: openapi`) caches HTTP responses of read-only operations instead, per
    tenant: `rfc` (also `auto`) as the API's `Cache-Control`/`ETag` headers say, `ttl` for
    `ttl` seconds (for APIs that send no cache headers), `off` never."""

    mode: Literal["off", "auto", "on", "rfc", "ttl"] = "auto"
    ttl: float = Field(default=300.0, gt=0)

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: object) -> object:
        # YAML 1.1 reads a bare `off` / `on` as a boolean.
        if isinstance(value, bool):
            return "on" if value else "off"
        return value


class Package(_Strict):
    """A stdio server provisioned from a package instead of a command."""

    source: Literal["pypi", "npm"]
    name: str = Field(min_length=1, max_length=214)
    version: str = Field(min_length=1, max_length=100)
    """A version or range, resolved once when the server is registered."""
    bin: str | None = None
    """The executable the package installs (default: the package's name)."""


class ToolHints(_Strict):
    """The operator's word on a tool, over the server's annotations (which are only hints)."""

    read_only: bool | None = None
    idempotent: bool | None = None
    destructive: bool | None = None
    open_world: bool | None = None
    tags: list[str] = Field(default_factory=list[str])


class ServerConfig(_Strict):
    """One server of the registry."""

    command: str | None = None
    args: list[str] = Field(default_factory=list[str])
    env: dict[str, str] = Field(default_factory=dict[str, str])
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict[str, str])
    type: Literal["stdio", "http", "streamable-http", "sse", "openapi"] | None = None
    package: Package | None = None
    spec: str | None = Field(default=None, min_length=1, max_length=4096)
    """`type: openapi`: the API's OpenAPI 3.0/3.1 document, a path (relative to the registry
    file) or an http(s) URL fetched at load."""
    base_url: str | None = Field(default=None, pattern=r"^https?://")
    """Where the API's paths are, over the document's first server."""
    operations: OperationSelection = Field(default_factory=OperationSelection)
    """Which operations become tools (by tag, path or method)."""
    tool_names: dict[str, str] = Field(default_factory=dict[str, str])
    """Tool names by `operationId` or `"METHOD /path"` (default: the operationId)."""
    credentials: dict[str, ApiCredential] = Field(default_factory=dict[str, ApiCredential])
    """Secrets by the document's security scheme name (references only)."""
    tenant_credentials: dict[str, dict[str, ApiCredential]] = Field(
        default_factory=dict[str, dict[str, ApiCredential]]
    )
    """Tenant pattern → secrets by scheme, over `credentials` (first matching pattern)."""
    spec_version: str | None = Field(default=None, min_length=1, max_length=100)
    """Pins the document's `info.version`: another version is refused."""
    spec_digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{12,64}$")
    """Pins the document's hash (a prefix of its sha256): any other document is refused."""
    rate_limit: RateLimit | None = None
    """Calls of the whole server, shared by every replica (each enforces its share)."""
    tenant_rate_limit: RateLimit | None = None
    """Calls of each tenant on this server, shared the same way."""
    tenants: list[str] = Field(default_factory=lambda: ["*"])
    """Tenants that may list and call it (`fnmatch` patterns; `*`: every tenant)."""
    tools: ToolFilter = Field(default_factory=ToolFilter)
    timeout: float = Field(default=60.0, gt=0, le=3600)
    """Seconds a call may take unless the tool or the request says less."""
    tool_timeouts: dict[str, float] = Field(default_factory=dict[str, float])
    connect_timeout: float = Field(default=10.0, gt=0, le=600)
    max_concurrency: int = Field(default=16, ge=1, le=10_000)
    cache: CachePolicy = Field(default_factory=CachePolicy)
    sandbox: Literal["default", "none"] | SandboxProfile = "default"
    """`none` runs a stdio server unsandboxed (logged as a warning); a mapping gives the
    sandbox's folders, network, environment allow-list and limits."""
    start: Literal["eager", "lazy"] = "lazy"
    on_tool_change: Literal["accept", "quarantine"] = "quarantine"
    protocol: Literal["auto", "legacy", "2026-07-28"] = "auto"
    """How the protocol revision is negotiated (`auto`: the newest both sides speak)."""
    sessions: Literal["per-tenant", "shared"] = "per-tenant"
    """`per-tenant`: one session (for stdio: one process) per tenant and credential, never
    shared; `shared`: one for every tenant (only for stateless servers)."""
    output_validation: Literal["off", "warn", "strict"] = "warn"
    """`structuredContent` against `outputSchema`: `strict` fails the call, `warn` logs and
    counts (real servers often get their own schemas wrong)."""
    retries: int = Field(default=1, ge=0, le=5)
    """Extra attempts after a transport failure, for read-only or idempotent tools only."""
    tags: list[str] = Field(default_factory=list[str])
    """Tags on every tool of the server, for catalog filtering."""
    tool_hints: dict[str, ToolHints] = Field(default_factory=dict[str, ToolHints])
    """Per tool: read-only / idempotent / destructive overrides and tags."""
    redact: list[str] = Field(default_factory=list[str])
    """Argument fields replaced by `[redacted]` in audit records (with the worker's list)."""

    @property
    def transport(self) -> Literal["stdio", "streamable-http", "sse", "openapi"]:
        """How the worker talks to it."""
        if self.spec is not None:
            return "openapi"
        if self.url is None:
            return "stdio"
        return "sse" if self.type == "sse" else "streamable-http"

    @property
    def is_api(self) -> bool:
        """An HTTP API described by an OpenAPI document (its operations are the tools)."""
        return self.spec is not None

    @property
    def api_cache_mode(self) -> Literal["off", "rfc", "ttl"]:
        """How an API's responses are cached (`auto` follows the API's headers)."""
        mode = self.cache.mode
        return "off" if mode == "off" else "ttl" if mode == "ttl" else "rfc"

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        given = [k for k in ("command", "url", "package", "spec") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of command (stdio), url (HTTP), package (provisioned"
                f" stdio) or spec (an OpenAPI API), got {given or 'none'}"
            )
        if (self.type == "openapi") != (self.spec is not None):
            raise ValueError("type openapi takes a spec (its OpenAPI document), and only it does")
        if self.spec is None:
            api_keys = ("base_url", "credentials", "tenant_credentials", "spec_version")
            stray = [k for k in api_keys if k in self.model_fields_set]
            if stray:
                raise ValueError(f"{', '.join(stray)}: only for type openapi")
            if self.cache.mode in ("rfc", "ttl"):
                raise ValueError("cache modes rfc and ttl apply to type openapi only")
        elif self.cache.mode == "on":
            raise ValueError("an API's cache mode is off, auto, rfc or ttl")
        if self.url is not None and self.type == "stdio":
            raise ValueError("type stdio takes a command, not a url")
        if self.url is None and self.type in ("http", "streamable-http", "sse"):
            raise ValueError(f"type {self.type} needs a url")
        if self.url is None and self.headers:
            raise ValueError("headers apply to HTTP servers only")
        for where, values in (("headers", self.headers), ("env", self.env)):
            for name, value in values.items():
                if _SECRET_NAME.search(name) and not is_reference(value):
                    raise ValueError(
                        f"{where}.{name} carries a credential: give a reference"
                        " (env:VAR or file:/path), never the value"
                    )
        return self


class Registry(_Strict):
    """The whole file: servers by name, and what each tenant may use."""

    servers: dict[ServerName, ServerConfig] = Field(
        validation_alias=AliasChoices("mcpServers", "servers")
    )
    access: dict[str, AccessRule] = Field(default_factory=dict[str, AccessRule])
    """Tenant pattern → `server/tool` allow and deny patterns (deny wins)."""


def parse_registry(data: bytes, origin: str = "registry file") -> Registry:
    """Parse a registry file (YAML or JSON).

    Raises:
        RegistryError: not YAML/JSON, or invalid; the message names the server and field.
    """
    try:
        document: Any = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise RegistryError(f"{origin} is not YAML or JSON: {exc}") from None
    if not isinstance(document, dict):
        raise RegistryError(f"{origin} must be a mapping with mcpServers")
    try:
        return Registry.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'file'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise RegistryError(f"{origin}: {problems}") from None


def dumps_registry(registry: Registry) -> str:
    """The registry as JSON in the `mcpServers` form (references stay references)."""
    servers = {n: s.model_dump(exclude_defaults=True) for n, s in registry.servers.items()}
    return json.dumps({"mcpServers": servers}, indent=2, sort_keys=True)
