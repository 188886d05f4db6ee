"""The mcp_worker's settings, read once from the environment at the entry point
(`MCP_WORKER_` prefix, plus `KAFKA_BOOTSTRAP_SERVERS`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ferryman.contracts.mcp import (
    DEFAULT_MCP_AUDIT_TOPIC,
    DEFAULT_MCP_CATALOG_TOPIC,
    DEFAULT_MCP_CONTROL_TOPIC,
    DEFAULT_MCP_REPLY_TOPIC,
    DEFAULT_MCP_REQUEST_TOPIC,
)
from ferryman.contracts.usage import USAGE_TOPIC
from ferryman_runtime.settings import WorkerSettings


class McpWorkerSettings(WorkerSettings):
    """Environment variables prefixed `MCP_WORKER_`."""

    model_config = SettingsConfigDict(
        env_prefix="MCP_WORKER_", env_nested_delimiter="__", extra="ignore", populate_by_name=True
    )

    group_id: str = "ferryman-mcp-worker"
    request_topic: str = DEFAULT_MCP_REQUEST_TOPIC
    default_reply_topic: str = DEFAULT_MCP_REPLY_TOPIC
    max_in_flight: int = Field(default=2048, ge=1)
    """Requests in flight per replica (tool calls mostly wait on their servers)."""
    control_topic: str = DEFAULT_MCP_CONTROL_TOPIC
    """Cancels and approvals; every replica reads all of it (no consumer group)."""
    catalog_topic: str = DEFAULT_MCP_CATALOG_TOPIC
    """Compacted: the latest catalog record per server."""
    audit_topic: str = DEFAULT_MCP_AUDIT_TOPIC
    """One record per call, and tool definition changes."""
    usage_topic: str = USAGE_TOPIC
    """One usage event per finished request (tenant, user, server and tool, outcome)."""
    registry_file: Path | None = None
    """The server registry (YAML or JSON; `mcpServers` format). None: no servers."""
    registry_poll_interval: float = Field(default=1.0, gt=0)
    cancel_window: float = Field(default=600.0, gt=0)
    """Seconds a cancel is remembered for a request that has not arrived yet; on start a
    replica reads the control topic back this far."""
    list_changed_debounce: float = Field(default=0.5, ge=0)
    """Seconds to wait after `tools/list_changed` for more before re-listing."""
    restart_base_delay: float = Field(default=0.5, gt=0)
    """First delay before restarting a crashed stdio server (doubles up to the maximum)."""
    restart_max_delay: float = Field(default=30.0, gt=0)
    max_argument_bytes: int = Field(default=1_000_000, ge=1)
    """Largest tool arguments (as JSON) accepted."""
    max_argument_depth: int = Field(default=32, ge=1)
    """Deepest nesting of tool arguments accepted."""
    max_output_bytes: int = Field(default=900_000, ge=1)
    """Largest result (content and structured content, as JSON) passed on; below Kafka's
    default 1 MB message limit, with room for the event's envelope."""
    output_overflow: Literal["truncate", "fail"] = "truncate"
    """Past `max_output_bytes`: cut text blocks and flag `truncated`, or fail `too_large`."""
    cache_max_entries: int = Field(default=10_000, ge=0)
    """Result cache size (0: no caching)."""
    audit_arguments: bool = False
    """Whether audit records carry the (redacted) arguments, not only their digest."""
    audit_redact: list[str] = Field(
        default_factory=lambda: ["password", "token", "secret", "api_key", "authorization"]
    )
    """Argument field names (any depth, case-insensitive) redacted in audit records."""
    sandbox_bwrap: str = "bwrap"
    """The bubblewrap executable for sandboxed stdio servers."""
    sandbox_prlimit: str = "prlimit"
    packages_dir: Path = Path(".ferryman/mcp-packages")
    """Where servers named by a package are provisioned (cached across restarts)."""
    health_probe_interval: float = Field(default=30.0, gt=0)
    """Seconds between `tools/list` probes of each running server."""
    health_probe_timeout: float = Field(default=30.0, gt=0)
    """Seconds a probe (a `tools/list` of a running server) may take."""
    health_report_interval: float = Field(default=30.0, gt=0)
    api_max_response_bytes: int = Field(default=4 * 1024 * 1024, ge=1)
    """Largest API response body read (more is cut and the result flagged `truncated`)."""
    api_cache_max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    """Bytes of API responses each API's HTTP cache holds at most (in memory)."""
