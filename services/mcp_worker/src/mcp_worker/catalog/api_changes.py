"""Changes of an API's document: the compatibility report between the document a name
served and the one it serves now, published on the audit topic; the tools with breaking
changes follow the entry's `on_tool_change` policy (quarantined until approved, or
accepted), the others are taken as they are. An edited document file is noticed and
served anew, as a registry change would be."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from ferryman.contracts.mcp import ApiChange, ApiChanged
from mcp_worker.catalog.catalog import Catalog
from mcp_worker.catalog.definitions import definition_hash, tool_definition
from mcp_worker.openapi.backend import ApiBackend, entry_tools, file_digest
from mcp_worker.openapi.compat import compare
from mcp_worker.openapi.spec import ApiSpec
from mcp_worker.servers.fleet import Fleet

logger = logging.getLogger(__name__)


class ApiChanges:
    """Reports API document changes and notices edited document files.

    Args:
        catalog: approvals of compatible definitions go here.
        fleet: the servers (their loaded APIs).
        base_dir: where relative document paths resolve.
        publish: sends a report (the audit topic).
        served_anew: called with a server whose document file changed, after the fleet
            replaced it (the owner lists it again).
    """

    def __init__(
        self,
        catalog: Catalog,
        fleet: Fleet,
        *,
        base_dir: Path,
        publish: Callable[[ApiChanged], Coroutine[Any, Any, None]],
        served_anew: Callable[[str], None],
    ) -> None:
        self._catalog = catalog
        self._fleet = fleet
        self._base_dir = base_dir
        self._publish = publish
        self._served_anew = served_anew
        self._tasks: set[asyncio.Task[None]] = set()
        self.reports = 0

    def loaded(self, server: str, previous: ApiSpec | None, backend: ApiBackend) -> None:
        """An API's document was loaded: compare it with the one served before (if any)."""
        new = backend.spec
        if previous is None or previous.digest == new.digest:
            return
        report = compare(previous, new, lambda spec: entry_tools(spec, backend.config))
        before = {t.name: t for t in entry_tools(previous, backend.config).tools}
        # Entries name operations; a removed one by its old tool name.
        by_operation = {f"{t.method} {t.path}": t.name for t in before.values()}
        by_operation.update({f"{t.method} {t.path}": t.name for t in backend.tools.values()})
        breaking_tools = (
            {
                by_operation[e.operation]
                for e in report.entries
                if e.breaking and e.operation in by_operation
            }
            & set(before)
            & set(backend.tools)
        )  # a renamed tool is new: no earlier approval
        held = set(breaking_tools)
        for tool in backend.mcp_tools():
            old = before.get(tool.name)
            # A compatible change is no rug pull, but a changed description may be (it is
            # what the model reads): that one follows the policy like a breaking change.
            if tool.name in breaking_tools or (
                old is not None and old.description != (tool.description or "")
            ):
                held.add(tool.name)
                continue
            self._catalog.remember(server, tool.name, definition_hash(tool_definition(tool)))
        quarantine = backend.config.on_tool_change == "quarantine"
        changed = ApiChanged(
            server=server,
            old_version=previous.version,
            new_version=new.version,
            old_digest=previous.digest,
            new_digest=new.digest,
            breaking=report.breaking,
            changes=[
                ApiChange(
                    kind=e.kind,
                    tool=by_operation.get(e.operation, e.operation),
                    detail=e.detail[:1000],
                    breaking=e.breaking,
                )
                for e in report.entries[:200]
            ],
            quarantined=sorted(held) if quarantine else [],
        )
        logger.warning(
            "API %s changed from %s to %s: %d changes, %d breaking%s",
            server,
            previous.version,
            new.version,
            len(report.entries),
            sum(1 for e in report.entries if e.breaking),
            f"; quarantined: {', '.join(changed.quarantined)}" if changed.quarantined else "",
        )
        self.reports += 1
        task = asyncio.get_running_loop().create_task(self._publish(changed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def check_files(self) -> list[str]:
        """Serve anew every API whose document file changed since it was loaded; return them.
        The files are read and hashed off the event loop (a document may be megabytes)."""
        loaded = {
            name: backend
            for name in self._fleet.names()
            if (backend := self._fleet.api_backend(name)) is not None
            and backend.source_digest is not None
        }
        digests = await asyncio.to_thread(
            lambda: {n: file_digest(b.config, self._base_dir) for n, b in loaded.items()}
        )
        changed: list[str] = []
        for name, backend in loaded.items():
            now = digests[name]
            if now is None or now == backend.source_digest:
                continue
            # Still the backend that was hashed: a reload meanwhile has read the file anew.
            if self._fleet.api_backend(name) is backend and self._fleet.reload(name):
                logger.info("API %s: its document file changed; serving it anew", name)
                changed.append(name)
                self._served_anew(name)
        return changed

    async def watch(self, interval: float) -> None:
        """Check the document files every `interval` seconds (runs until cancelled)."""
        while True:
            await asyncio.sleep(interval)  # a polling period, not synchronization
            await self.check_files()

    async def close(self) -> None:
        """Wait for reports being published."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
