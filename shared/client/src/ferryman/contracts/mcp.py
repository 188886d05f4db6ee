"""MCP requests and replies (the `data` of Ferryman's MCP CloudEvents).

Producers ask the mcp_worker to call a tool, read a resource, get a prompt or list the
catalog of servers and tools their tenant may see. Replies stream progress (from MCP
progress notifications) and end with one `completed` of the request's kind or one
`failed` in the shared taxonomy. A tool's own error (`isError: true`) is a `completed`
with `is_error`, not a `failed`: the tool ran and answered.

Content blocks, `structuredContent` and schemas travel as MCP returned them (JSON
objects): the MCP revisions add block types, and the worker must not drop what it does
not know.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ferryman.contracts.errors import ErrorInfo

MCP_TOOL_CALL_REQUESTED: Final = "ferryman.mcp.tool.call.requested"
MCP_RESOURCE_READ_REQUESTED: Final = "ferryman.mcp.resource.read.requested"
MCP_PROMPT_GET_REQUESTED: Final = "ferryman.mcp.prompt.get.requested"
MCP_CATALOG_LIST_REQUESTED: Final = "ferryman.mcp.catalog.list.requested"

MCP_PROGRESS: Final = "ferryman.mcp.progress"
MCP_TOOL_CALL_COMPLETED: Final = "ferryman.mcp.tool.call.completed"
MCP_RESOURCE_READ_COMPLETED: Final = "ferryman.mcp.resource.read.completed"
MCP_PROMPT_GET_COMPLETED: Final = "ferryman.mcp.prompt.get.completed"
MCP_CATALOG_LIST_COMPLETED: Final = "ferryman.mcp.catalog.list.completed"
MCP_FAILED: Final = "ferryman.mcp.failed"

MCP_CANCEL_REQUESTED: Final = "ferryman.mcp.cancel.requested"
"""On the control topic, keyed by the request id; every replica reads it."""
MCP_TOOL_APPROVED: Final = "ferryman.mcp.tool.approved"
"""On the control topic: an operator approves a changed (quarantined) tool definition."""

MCP_CATALOG_UPDATED: Final = "ferryman.mcp.catalog.updated"
"""On the compacted catalog topic, keyed by server name (a tombstone: the server is gone)."""
MCP_TOOL_CHANGED: Final = "ferryman.mcp.tool.changed"
"""On the audit topic: a tool's definition hash changed (a possible rug pull)."""
MCP_CALL_AUDITED: Final = "ferryman.mcp.call.audited"
"""On the audit topic: one record per tool call, resource read or prompt get."""
MCP_API_CHANGED: Final = "ferryman.mcp.api.changed"
"""On the audit topic: an OpenAPI server's document changed (its compatibility report)."""

DEFAULT_MCP_REQUEST_TOPIC: Final = "mcp.requests"
DEFAULT_MCP_REPLY_TOPIC: Final = "mcp.results"
DEFAULT_MCP_CONTROL_TOPIC: Final = "mcp.control"
DEFAULT_MCP_CATALOG_TOPIC: Final = "mcp.catalog"
DEFAULT_MCP_AUDIT_TOPIC: Final = "mcp.audit"

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
"""Tool names: what MCP clients and registries accept, without path characters."""
_SERVER_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}(@[A-Za-z0-9_.\-]{1,32})?")
"""Server names: the same, with an optional `@version` (two versions of one API side by
side: `petstore@1`, `petstore@2`)."""

JsonObject = dict[str, Any]
ContentBlock = dict[str, Any]
"""One MCP content block as the server returned it (`{"type": "text", "text": …}`, …)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _named(kind: str, pattern: re.Pattern[str] = _NAME, suffix: str = "") -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"{kind} {value[:140]!r} must be 1-128 of A-Z a-z 0-9 _ . -{suffix}")
        return value

    return AfterValidator(check)


ServerName = Annotated[
    str, _named("server name", _SERVER_NAME, " (and an optional @version of the same)")
]
"""A server's name in the registry."""
ToolName = Annotated[str, _named("tool name")]
PromptName = Annotated[str, _named("prompt name")]


class ToolCallRequest(_Strict):
    """The `data` of `ferryman.mcp.tool.call.requested`."""

    server: ServerName
    """The registry's name of the MCP server."""
    tool: ToolName
    """The tool's name on that server."""
    arguments: JsonObject = Field(default_factory=dict[str, Any])
    """The tool's arguments, validated against its `inputSchema` before the call."""
    progress: bool = True
    """Whether to publish `progress` events from the server's progress notifications."""
    timeout: float | None = Field(default=None, gt=0, le=3600)
    """Seconds the call may take (never past `expirytime`; the tool's and server's bounds
    apply too)."""
    principal: str | None = Field(default=None, max_length=256)
    """Who asked, for the audit record (the tenant is the `tenant` extension)."""
    use_cache: bool = True
    """Whether a cached result (for tools whose results may be cached) may answer."""


class ResourceReadRequest(_Strict):
    """The `data` of `ferryman.mcp.resource.read.requested`."""

    server: ServerName
    uri: str = Field(min_length=1, max_length=8192)
    """The resource's URI as the server lists it."""
    timeout: float | None = Field(default=None, gt=0, le=3600)
    principal: str | None = Field(default=None, max_length=256)


class PromptGetRequest(_Strict):
    """The `data` of `ferryman.mcp.prompt.get.requested`."""

    server: ServerName
    prompt: PromptName
    arguments: dict[str, str] = Field(default_factory=dict[str, str])
    """MCP prompt arguments are strings."""
    timeout: float | None = Field(default=None, gt=0, le=3600)
    principal: str | None = Field(default=None, max_length=256)


class CatalogListRequest(_Strict):
    """The `data` of `ferryman.mcp.catalog.list.requested`: what the caller's tenant may see."""

    servers: list[str] | None = None
    """Only these servers (None: every server the tenant may see)."""
    include_schemas: bool = True
    """Whether tool entries carry their input and output schemas."""


class McpProgress(_Strict):
    """The `data` of `ferryman.mcp.progress`: one MCP progress notification."""

    progress: float
    total: float | None = None
    message: str | None = None
    sequence: int = Field(ge=0)
    """Counts 0, 1, 2… within one run of the request."""


class ToolAnnotations(_Strict):
    """MCP tool annotations (hints, not guarantees: the registry file may override them)."""

    title: str | None = None
    read_only: bool | None = None
    destructive: bool | None = None
    idempotent: bool | None = None
    open_world: bool | None = None


class ToolEntry(_Strict):
    """A tool in the catalog."""

    name: str
    description: str | None = None
    input_schema: JsonObject | None = None
    output_schema: JsonObject | None = None
    annotations: ToolAnnotations = Field(default_factory=ToolAnnotations)
    tags: list[str] = Field(default_factory=list[str])
    definition_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    """sha256 of the tool's canonical definition (a change means the tool changed)."""
    state: Literal["available", "quarantined"] = "available"
    """`quarantined`: its definition changed and the policy blocks it until approved."""


class ServerEntry(_Strict):
    """A server in the catalog, as its tenant may see it."""

    server: str
    transport: Literal["stdio", "streamable-http", "sse", "openapi"]
    """`openapi`: an HTTP API whose operations are tools (described by an OpenAPI document)."""
    protocol_version: str | None = None
    """The MCP revision negotiated with it (None before the first connection); for an API,
    `openapi <version of the document's format>`."""
    api_version: str | None = None
    """An API's `info.version` (the version of the document the tools come from)."""
    spec_digest: str | None = None
    """An API's document hash (sha256 of its canonical JSON, external references included)."""
    status: Literal["healthy", "degraded", "unhealthy", "provisioning"] = "healthy"
    package_version: str | None = None
    """The provisioned package's resolved version, for servers installed from a package."""
    tools: list[ToolEntry] = Field(default_factory=list[ToolEntry])
    resources: list[JsonObject] = Field(default_factory=list[JsonObject])
    prompts: list[JsonObject] = Field(default_factory=list[JsonObject])


class ToolCallCompleted(_Strict):
    """The `data` of `ferryman.mcp.tool.call.completed`."""

    server: str
    tool: str
    content: list[ContentBlock]
    """The content blocks as the server returned them."""
    structured_content: JsonObject | None = None
    is_error: bool = False
    """The tool reported an error itself (`isError: true`): it ran and answered."""
    protocol_version: str
    definition_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    """The hash of the tool definition the call was made against."""
    duration_ms: float = Field(ge=0)
    cached: bool = False
    """Answered from the result cache, not by a call."""
    truncated: bool = False
    """The output exceeded the configured limit and was cut."""


class ResourceReadCompleted(_Strict):
    """The `data` of `ferryman.mcp.resource.read.completed`."""

    server: str
    uri: str
    contents: list[JsonObject]
    """`TextResourceContents` / `BlobResourceContents` as the server returned them."""
    protocol_version: str
    duration_ms: float = Field(ge=0)


class PromptGetCompleted(_Strict):
    """The `data` of `ferryman.mcp.prompt.get.completed`."""

    server: str
    prompt: str
    description: str | None = None
    messages: list[JsonObject]
    """`PromptMessage`s as the server returned them."""
    protocol_version: str
    duration_ms: float = Field(ge=0)


class CatalogListCompleted(_Strict):
    """The `data` of `ferryman.mcp.catalog.list.completed`."""

    servers: list[ServerEntry]
    catalog_version: str
    """Changes whenever any listed server's tools, resources or prompts change."""


class McpFailed(_Strict):
    """The `data` of `ferryman.mcp.failed`."""

    error: ErrorInfo


class CancelRequest(_Strict):
    """The `data` of `ferryman.mcp.cancel.requested` on the control topic (Kafka key: the
    request id). The call is cancelled on whichever replica runs it (the server receives
    `notifications/cancelled`); a request that arrives after its cancel fails `cancelled`."""

    request_id: str = Field(min_length=1, max_length=4096)
    """The `ce_id` of the request to cancel."""
    source: str = Field(min_length=1, max_length=4096)
    """The `ce_source` of that request ((source, id) identifies it)."""
    reason: str | None = Field(default=None, max_length=1000)


class ToolApproval(_Strict):
    """The `data` of `ferryman.mcp.tool.approved` on the control topic: the definition with
    this hash may be called (it leaves quarantine on every replica)."""

    server: ServerName
    tool: ToolName
    definition_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    approved_by: str | None = Field(default=None, max_length=256)


class AccessRule(_Strict):
    """What tenants matching one pattern may see and call: `server/tool` patterns (`fnmatch`;
    `time/*`, `*/read_*`). Deny wins; with an allow list, only what it matches."""

    allow: list[str] | None = None
    deny: list[str] = Field(default_factory=list[str])


def _matches(value: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


def tenant_may_use(
    tenant: str | None,
    server: str,
    tool: str | None,
    server_tenants: list[str],
    access: dict[str, AccessRule],
) -> bool:
    """Whether `tenant` may list and call `tool` on `server` (`tool` None: whether it may use
    the server at all, i.e. some tool on it).

    The same rule on every side: the mcp_worker enforces it, and a producer or the LLM worker
    filtering the catalog topic applies it to the records' `tenants` and `access`. A request
    without a tenant is the tenant `""`.
    """
    name = tenant or ""
    if not _matches(name, server_tenants):
        return False
    rules = [rule for pattern, rule in access.items() if fnmatch.fnmatchcase(name, pattern)]
    if tool is None:
        whole = f"{server}/*"
        if any(whole in rule.deny or _matches(whole, rule.deny) for rule in rules):
            return False
        return all(
            any(fnmatch.fnmatchcase(server, p.split("/", 1)[0]) for p in rule.allow)
            for rule in rules
            if rule.allow is not None
        )
    target = f"{server}/{tool}"
    if any(_matches(target, rule.deny) for rule in rules):
        return False
    return all(_matches(target, rule.allow) for rule in rules if rule.allow is not None)


class CatalogRecord(_Strict):
    """The `data` of `ferryman.mcp.catalog.updated` on the compacted catalog topic (key: the
    server name): everything discovered on one server, with the access rules that filter it."""

    entry: ServerEntry
    tenants: list[str]
    """Tenant patterns that may use the server at all."""
    access: dict[str, AccessRule] = Field(default_factory=dict[str, AccessRule])
    """The registry's per-tenant rules (tenant pattern → rule), for `tenant_may_use`."""


class DefinitionChange(_Strict):
    """One changed field of a tool definition (a JSON pointer into the definition)."""

    path: str
    old: Any = None
    new: Any = None


class ToolChanged(_Strict):
    """The `data` of `ferryman.mcp.tool.changed` on the audit topic."""

    server: str
    tool: str
    old_hash: str
    new_hash: str
    changes: list[DefinitionChange]
    state: Literal["available", "quarantined"]
    """`quarantined`: calls are refused until the new definition is approved."""


class CallAudit(_Strict):
    """The `data` of `ferryman.mcp.call.audited` on the audit topic: one per request."""

    request_id: str
    source: str
    kind: Literal["tool", "resource", "prompt"]
    server: str
    target: str
    """The tool, resource URI or prompt name."""
    tenant: str | None = None
    principal: str | None = None
    arguments_sha256: str | None = None
    """sha256 of the canonical arguments (after redaction of the configured fields)."""
    arguments: JsonObject | None = None
    """The arguments with the configured fields redacted (when the operator records them)."""
    outcome: Literal["completed", "tool_error", "failed", "denied", "cancelled"]
    error_code: str | None = None
    cached: bool = False
    definition_hash: str | None = None
    duration_ms: float = Field(ge=0)


class ApiChange(_Strict):
    """One difference between two versions of an API's document."""

    kind: str
    """`operation_removed`, `operation_added`, `parameter_required`, `type_changed`, …"""
    tool: str
    """The tool (operation) it concerns."""
    detail: str
    breaking: bool


class ApiChanged(_Strict):
    """The `data` of `ferryman.mcp.api.changed` on the audit topic: an OpenAPI server's
    document changed (a reload, a changed file). Tools with a breaking change follow the
    server's `on_tool_change` policy (quarantined until approved, or accepted); tools with
    only compatible changes are taken as they are."""

    server: str
    old_version: str
    new_version: str
    old_digest: str
    new_digest: str
    breaking: bool
    changes: list[ApiChange]
    quarantined: list[str] = Field(default_factory=list[str])
    """Tools now refused until an operator approves their new definition."""
