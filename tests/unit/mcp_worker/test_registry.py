"""The server registry file: the formats users have, Ferryman's keys, credentials by reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mcp_worker.references import resolve
from mcp_worker.registry import RegistryError, dumps_registry, parse_registry

CLAUDE_DESKTOP = json.dumps(
    {
        "mcpServers": {
            "time": {"command": "mcp-server-time", "args": ["--local-timezone", "UTC"]},
            "files": {
                "command": "mcp-server-filesystem",
                "args": ["/data"],
                "env": {"LOG_LEVEL": "info", "API_TOKEN": "env:FILES_TOKEN"},
            },
        }
    }
).encode()

VS_CODE_YAML = b"""
servers:
  search:
    type: http
    url: https://search.example/mcp
    headers: {Authorization: "file:/run/secrets/search"}
    tenants: [acme, "team-*"]
    tools: {allow: ["search_*"], deny: ["search_admin"]}
    timeout: 20
    max_concurrency: 4
    cache: {mode: "on", ttl: 60}
  legacy:
    type: sse
    url: http://127.0.0.1:9000/sse
  provisioned:
    package: {source: pypi, name: mcp-server-time, version: "==2026.1.26"}
    start: eager
"""


def test_the_claude_desktop_form_is_read_as_stdio_servers() -> None:
    registry = parse_registry(CLAUDE_DESKTOP)

    time, files = registry.servers["time"], registry.servers["files"]
    assert (time.transport, time.command, time.args) == (
        "stdio",
        "mcp-server-time",
        ["--local-timezone", "UTC"],
    )
    assert files.env == {"LOG_LEVEL": "info", "API_TOKEN": "env:FILES_TOKEN"}
    assert (time.tenants, time.sandbox, time.on_tool_change) == (["*"], "default", "quarantine")


def test_the_vs_code_form_with_ferryman_keys() -> None:
    registry = parse_registry(VS_CODE_YAML)

    search = registry.servers["search"]
    assert search.transport == "streamable-http"
    assert registry.servers["legacy"].transport == "sse"
    assert registry.servers["provisioned"].transport == "stdio"
    assert search.tools.permits("search_web") is True
    assert search.tools.permits("search_admin") is False  # deny wins
    assert search.tools.permits("delete_all") is False
    assert (search.timeout, search.max_concurrency, search.cache.mode) == (20, 4, "on")


@pytest.mark.parametrize(
    ("servers", "problem"),
    [
        ({"s": {"command": "x", "url": "http://h"}}, "exactly one of"),
        ({"s": {}}, "exactly one of"),
        ({"s": {"type": "http", "command": "x"}}, "needs a url"),
        ({"s": {"url": "http://h", "headers": {"Authorization": "Bearer abc"}}}, "reference"),
        ({"s": {"command": "x", "env": {"OPENAI_API_KEY": "sk-live-123"}}}, "reference"),
        ({"s": {"command": "x", "headers": {"A": "b"}}}, "HTTP servers only"),
        ({"s": {"command": "x", "timout": 5}}, "timout"),
        ({"../s": {"command": "x"}}, "server name"),
        ({"s": {"command": "x", "max_concurrency": 0}}, "max_concurrency"),
    ],
)
def test_invalid_entries_are_refused_naming_the_server_and_field(
    servers: dict[str, object], problem: str
) -> None:
    with pytest.raises(RegistryError) as refused:
        parse_registry(json.dumps({"mcpServers": servers}).encode(), "servers.json")

    assert problem in str(refused.value)
    assert "sk-live-123" not in str(refused.value)
    assert "Bearer abc" not in str(refused.value)


def test_a_file_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(RegistryError, match="mapping"):
        parse_registry(b"- just\n- a list\n")
    with pytest.raises(RegistryError, match="not YAML"):
        parse_registry(b"mcpServers: {a: [}")


def test_references_resolve_from_the_environment_and_files(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret\n", encoding="utf-8")

    assert resolve("env:TOKEN", {"TOKEN": "abc"}).get_secret_value() == "abc"
    assert resolve(f"file:{secret}", {}).get_secret_value() == "s3cret"
    assert resolve("plain", {}).get_secret_value() == "plain"
    with pytest.raises(RegistryError, match="not set"):
        resolve("env:MISSING", {})
    with pytest.raises(RegistryError, match="FileNotFoundError"):
        resolve(f"file:{tmp_path / 'nope'}", {})


def test_a_registry_written_back_keeps_references_and_reads_the_same() -> None:
    registry = parse_registry(VS_CODE_YAML)

    again = parse_registry(dumps_registry(registry).encode())

    assert again == registry
    assert "file:/run/secrets/search" in dumps_registry(registry)


def test_the_documented_example_registry_parses_and_yaml_off_means_off() -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parents[3] / "docs" / "examples" / "mcp-servers.yaml"
    registry = parse_registry(example.read_bytes())

    assert registry.servers["time"].cache.mode == "off"
    assert registry.servers["everything"].package is not None
    assert registry.access["*"].deny == ["everything/toggle-*"]
