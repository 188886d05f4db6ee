"""Entry point: `python -m mcp_worker` (settings from `MCP_WORKER_*` variables)."""

from __future__ import annotations

from ferryman_runtime.entry import run_worker
from mcp_worker.app import create_app
from mcp_worker.settings import McpWorkerSettings


def main() -> None:
    """Run the mcp_worker until SIGTERM, then drain and exit."""
    run_worker(McpWorkerSettings, create_app)


if __name__ == "__main__":
    main()
