"""Provisioning real MCP servers from the real registries (PyPI through uv, npm) into a
temporary cache, then talking MCP to what was installed."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from ferryman.contracts.errors import ErrorCode
from mcp_worker.registry import Package
from mcp_worker.servers.provisioning import (
    MARKER,
    ProvisionedServer,
    Provisioner,
    ProvisioningError,
)

pytestmark = pytest.mark.integration

TIME = Package(source="pypi", name="mcp-server-time", version="2026.10.19")
EVERYTHING = Package(
    source="npm", name="@modelcontextprotocol/server-everything", version="2026.8.31"
)
MCP_SECONDS = 30.0


def is_executable(path: str) -> bool:
    return Path(path).is_file() and os.access(path, os.X_OK)


async def tool_names(server: ProvisionedServer, *args: str) -> set[str]:
    """The tools the installed executable offers, over stdio with the official client."""
    params = StdioServerParameters(command=server.command, args=list(args))
    async with Client(params, mode="auto", read_timeout_seconds=MCP_SECONDS) as client:
        return {tool.name for tool in (await client.list_tools()).tools}


@pytest.mark.timeout(240)
async def test_a_pypi_server_is_installed_once_and_speaks_mcp(tmp_path: Path) -> None:
    provisioner = Provisioner(tmp_path / "cache")

    server = await provisioner.provision(TIME)

    assert server.version == "2026.10.19"
    assert is_executable(server.command)
    assert Path(server.command).is_relative_to(server.root)
    assert Path(server.root).parent == tmp_path / "cache" / "pypi"
    assert "get_current_time" in await tool_names(server, "--local-timezone", "UTC")

    marker = Path(server.root) / MARKER
    written = marker.stat().st_mtime_ns
    assert await provisioner.provision(TIME) == server
    assert await Provisioner(tmp_path / "cache").provision(TIME) == server
    assert provisioner.installs == 1
    assert marker.stat().st_mtime_ns == written


@pytest.mark.timeout(240)
async def test_an_npm_server_is_installed_once_and_speaks_mcp(tmp_path: Path) -> None:
    provisioner = Provisioner(tmp_path / "cache")

    server = await provisioner.provision(EVERYTHING)

    assert server.version == "2026.8.31"
    assert Path(server.command) == Path(
        server.root, "node_modules", ".bin", "mcp-server-everything"
    )
    assert is_executable(server.command)
    assert {"echo", "get-sum"} <= await tool_names(server, "stdio")

    marker = Path(server.root) / MARKER
    written = marker.stat().st_mtime_ns
    again = Provisioner(tmp_path / "cache")
    assert await again.provision(EVERYTHING) == server
    assert again.installs == 0
    assert marker.stat().st_mtime_ns == written


@pytest.mark.timeout(240)
async def test_a_range_resolves_to_the_installed_version(tmp_path: Path) -> None:
    package = TIME.model_copy(update={"version": ">=2026.10.19,<2100"})

    server = await Provisioner(tmp_path / "cache").provision(package)

    assert Version(server.version) in SpecifierSet(package.version)
    assert is_executable(server.command)


@pytest.mark.timeout(240)
async def test_concurrent_provisions_install_once(tmp_path: Path) -> None:
    shared = Provisioner(tmp_path / "cache")
    replica = Provisioner(tmp_path / "cache")

    results = await asyncio.gather(
        shared.provision(TIME), shared.provision(TIME), replica.provision(TIME)
    )

    assert len(set(results)) == 1
    assert shared.installs + replica.installs == 1


@pytest.mark.timeout(240)
async def test_an_interrupted_install_is_redone(tmp_path: Path) -> None:
    provisioner = Provisioner(tmp_path / "cache")
    first = await provisioner.provision(TIME)
    (Path(first.root) / MARKER).unlink()

    again = await provisioner.provision(TIME)

    assert again == first
    assert provisioner.installs == 2
    assert (Path(again.root) / MARKER).is_file()
    assert "get_current_time" in await tool_names(again, "--local-timezone", "UTC")


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "package",
    [
        Package(source="pypi", name="ferryman-test-no-such-package-4c1e", version="1.0"),
        Package(source="npm", name="@ferryman-test-none/no-such-package-4c1e", version="1.0.0"),
        Package(source="pypi", name="mcp-server-time", version="==0.0.1"),
    ],
    ids=["pypi-missing", "npm-missing", "pypi-no-such-version"],
)
async def test_a_package_that_does_not_exist_fails_naming_it(
    tmp_path: Path, package: Package
) -> None:
    provisioner = Provisioner(tmp_path / "cache")

    with pytest.raises(ProvisioningError) as caught:
        await provisioner.provision(package)

    error = caught.value
    assert f"{package.source} package {package.name!r}" in error.message
    assert error.step in ("uv pip install", "npm install")
    assert (error.code, error.retryable) == (ErrorCode.NOT_FOUND, False)
    assert not list((tmp_path / "cache" / package.source).glob("*/"))
