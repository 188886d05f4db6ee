"""Commands other packages add to the `ferryman` CLI, through the `ferryman.commands` entry
point group: a worker ships its offline tools (the mcp_worker's `ferryman openapi …`) without
the light client depending on it.

A plugin is an object with `help` (one line), `configure(parser)` and `run(args) -> int`;
its command runs without Kafka.
"""

from __future__ import annotations

import argparse
import logging
from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

logger = logging.getLogger(__name__)

GROUP = "ferryman.commands"


@runtime_checkable
class CommandPlugin(Protocol):
    """One `ferryman` command contributed by an installed package."""

    help: str

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's arguments to its parser."""
        ...

    def run(self, args: argparse.Namespace) -> int:
        """Run the command; return the exit code."""
        ...


def installed_plugins() -> dict[str, CommandPlugin]:
    """The plugins of the installed packages, by command name (a broken one is skipped and
    logged: it must not take the whole CLI down)."""
    plugins: dict[str, CommandPlugin] = {}
    for point in entry_points(group=GROUP):
        try:
            plugin = point.load()
        except Exception as exc:  # an installed package's bug, not the user's
            logger.warning("ferryman command %r could not be loaded: %s", point.name, exc)
            continue
        if isinstance(plugin, CommandPlugin):
            plugins[point.name] = plugin
    return plugins
