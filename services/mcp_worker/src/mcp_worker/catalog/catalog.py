"""What every server offers, as this replica last discovered it, with rug-pull detection:
a tool whose definition hash changes is reported, and quarantined until approved when its
server's policy says so."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import mcp_types as types

from ferryman.contracts.mcp import (
    AccessRule,
    CatalogRecord,
    ServerEntry,
    ToolChanged,
    ToolEntry,
)
from mcp_worker.catalog.definitions import canonical_json, definition_hash, diff, tool_entry
from mcp_worker.registry import ServerConfig

logger = logging.getLogger(__name__)

Status = Literal["healthy", "degraded", "unhealthy", "provisioning"]

_UNAPPROVED = "quarantined-before-restart"
"""Stands for an approved hash this replica never saw (the tool was quarantined when the
record was published): no definition matches it, so none is taken as a first sight."""


@dataclass
class ServerCatalog:
    """One server's discovered tools, resources and prompts."""

    config: ServerConfig
    tools: dict[str, ToolEntry] = field(default_factory=dict[str, ToolEntry])
    definitions: dict[str, dict[str, Any]] = field(default_factory=dict[str, dict[str, Any]])
    resources: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    prompts: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    protocol_version: str | None = None
    package_version: str | None = None
    api_version: str | None = None
    spec_digest: str | None = None
    discovered: bool = False


class Catalog:
    """The catalog of every registered server.

    `known` hashes (from the catalog topic at start, or this replica's first discovery) are
    the approved baseline: a different hash later is a change.
    """

    def __init__(self) -> None:
        self._servers: dict[str, ServerCatalog] = {}
        self._approved: dict[tuple[str, str], list[str]] = {}
        self.access: dict[str, AccessRule] = {}
        self.recalled = asyncio.Event()
        """Set once the published catalog was read back (or could not be): discovery waits
        for it, so a first listing after a restart is compared with what was approved."""

    def servers(self) -> list[str]:
        """Registered server names."""
        return sorted(self._servers)

    def register(self, name: str, config: ServerConfig) -> None:
        """Add a server, or update its configuration (keeping what was discovered)."""
        current = self._servers.get(name)
        if current is None:
            self._servers[name] = ServerCatalog(config=config)
        elif current.config != config:
            # Hints, tags and tool filters come from the config: list again before use
            # (the definitions stay, so an unchanged tool is no "change").
            current.config = config
            current.discovered = False

    def invalidate(self, name: str) -> None:
        """List the server again before its next use (what it serves changed)."""
        current = self._servers.get(name)
        if current is not None:
            current.discovered = False

    def remove(self, name: str) -> None:
        """Forget a server."""
        self._servers.pop(name, None)

    def get(self, name: str) -> ServerCatalog | None:
        """The server's catalog, if it is registered."""
        return self._servers.get(name)

    def remember(self, server: str, tool: str, digest: str) -> None:
        """Record an approved definition (from the catalog topic or an approval)."""
        known = self._approved.setdefault((server, tool), [])
        if digest not in known:
            known.append(digest)

    def seed(self, record: CatalogRecord) -> None:
        """Take a server's last published record as the baseline: its available tools'
        hashes are approved; a quarantined tool stays quarantined until approved (its new
        definition is not taken as a first sight)."""
        for tool in record.entry.tools:
            known = self._approved.setdefault((record.entry.server, tool.name), [])
            if tool.state == "available":
                if tool.definition_hash not in known:
                    known.append(tool.definition_hash)
            elif not known:
                known.append(_UNAPPROVED)

    def approve(self, server: str, tool: str, digest: str) -> bool:
        """Approve a definition; return whether it released a quarantined tool."""
        self.remember(server, tool, digest)
        current = self._servers.get(server)
        if current is None:
            return False
        entry = current.tools.get(tool)
        if entry is None or entry.definition_hash != digest or entry.state != "quarantined":
            return False
        current.tools[tool] = entry.model_copy(update={"state": "available"})
        return True

    def update(
        self,
        server: str,
        tools: list[types.Tool],
        resources: list[dict[str, Any]],
        prompts: list[dict[str, Any]],
        protocol_version: str | None,
    ) -> list[ToolChanged]:
        """Install a fresh listing; return the tools whose definitions changed.

        Raises:
            KeyError: the server is not registered.
        """
        current = self._servers[server]
        changes: list[ToolChanged] = []
        fresh: dict[str, ToolEntry] = {}
        definitions: dict[str, dict[str, Any]] = {}
        for tool in tools:
            if not current.config.tools.permits(tool.name):
                continue
            entry, definition = tool_entry(tool, current.config)
            digest = entry.definition_hash
            approved = self._approved.setdefault((server, tool.name), [])
            previous = current.definitions.get(tool.name)
            if not approved and previous is None:
                approved.append(digest)  # first sight: the baseline
            if digest not in approved:
                known = list(approved)
                if current.config.on_tool_change == "quarantine":
                    entry = entry.model_copy(update={"state": "quarantined"})
                else:
                    approved.append(digest)
                old_hash = definition_hash(previous) if previous is not None else known[-1]
                if old_hash == _UNAPPROVED:
                    old_hash = ""
                already = current.tools.get(tool.name)
                if already is None or already.definition_hash != digest:
                    changes.append(
                        ToolChanged(
                            server=server,
                            tool=tool.name,
                            old_hash=old_hash,
                            new_hash=digest,
                            changes=diff(previous, definition) if previous is not None else [],
                            state=entry.state,
                        )
                    )
            fresh[tool.name] = entry
            definitions[tool.name] = definition
        current.tools = fresh
        current.definitions = definitions
        current.resources = resources
        current.prompts = prompts
        current.protocol_version = protocol_version
        current.discovered = True
        for change in changes:
            logger.warning(
                "tool %s/%s changed its definition (%s); state %s",
                server,
                change.tool,
                change.new_hash[:12],
                change.state,
            )
        return changes

    def entry(self, server: str, status: Status, *, schemas: bool = True) -> ServerEntry | None:
        """The server's catalog entry (None when it is not registered)."""
        current = self._servers.get(server)
        if current is None:
            return None
        tools = list(current.tools.values())
        if not schemas:
            tools = [
                t.model_copy(update={"input_schema": None, "output_schema": None}) for t in tools
            ]
        return ServerEntry(
            server=server,
            transport=current.config.transport,
            protocol_version=current.protocol_version,
            status=status,
            package_version=current.package_version,
            api_version=current.api_version,
            spec_digest=current.spec_digest,
            tools=sorted(tools, key=lambda t: t.name),
            resources=current.resources,
            prompts=current.prompts,
        )

    def record(self, server: str, status: Status) -> CatalogRecord | None:
        """The server's record for the catalog topic."""
        entry = self.entry(server, status)
        current = self._servers.get(server)
        if entry is None or current is None:
            return None
        return CatalogRecord(entry=entry, tenants=list(current.config.tenants), access=self.access)

    def version(self, servers: list[str]) -> str:
        """Changes whenever any of these servers' tools, resources or prompts change."""
        parts: list[Any] = []
        for name in sorted(servers):
            current = self._servers.get(name)
            if current is None:
                continue
            parts.append(
                [
                    name,
                    sorted((t.name, t.definition_hash, t.state) for t in current.tools.values()),
                    current.resources,
                    current.prompts,
                ]
            )
        return definition_hash({"catalog": canonical_json(parts)})[:16]
