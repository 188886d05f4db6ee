"""Provisioning packaged stdio servers: strict specs (no installer option, URL or path gets
through), and the install folder's life cycle against a fake `npm` executable (the real
registries are exercised in tests/integration/test_mcp_provisioning.py)."""

from __future__ import annotations

import asyncio
import json
import stat
import sys
import time
from pathlib import Path

import psutil
import pytest

from ferryman.contracts.errors import ErrorCode
from mcp_worker.registry import Package
from mcp_worker.servers.package_specs import executable_name, npm_spec, pypi_requirement
from mcp_worker.servers.provisioning import (
    MARKER,
    ProvisionedServer,
    Provisioner,
    ProvisioningError,
    redact,
)

# --- specs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("2026.10.19", "mcp-server-time==2026.10.19"),
        (" 2026.10.19 ", "mcp-server-time==2026.10.19"),
        ("1!2.0.post1", "mcp-server-time==1!2.0.post1"),
        (">=1,<2", "mcp-server-time<2,>=1"),
        ("~=1.2", "mcp-server-time~=1.2"),
        ("==1.*", "mcp-server-time==1.*"),
        ("!=1.5,>=1", "mcp-server-time!=1.5,>=1"),
    ],
)
def test_pypi_versions_and_ranges_become_requirements(version: str, expected: str) -> None:
    assert pypi_requirement("mcp-server-time", version) == expected


@pytest.mark.parametrize(
    "version",
    [
        "latest",
        "v1.0",
        "1.0.0.dev-x!",
        "https://evil.example/pkg-1.0-py3-none-any.whl",
        "file:///tmp/pkg",
        "../pkg",
        "--index-url https://evil.example/simple",
        ">=1 --extra-index-url https://evil.example/simple",
        "-r requirements.txt",
        ">=1; python_version > '3'",
        "@ https://evil.example/pkg.tar.gz",
        "===anything",
        "1.0 -e .",
        ",",
    ],
)
def test_pypi_rejects_what_is_not_a_version_or_range(version: str) -> None:
    with pytest.raises(ValueError, match="PyPI version"):
        pypi_requirement("mcp-server-time", version)


@pytest.mark.parametrize(
    "name",
    [
        "pkg[extra]",
        "pkg @ https://evil.example/x.whl",
        "-e",
        "--index-url=https://evil.example",
        "pkg;os_name=='posix'",
        "two words",
        "../pkg",
        "pkg-",
    ],
)
def test_pypi_rejects_names_that_are_not_plain(name: str) -> None:
    with pytest.raises(ValueError, match="not a plain distribution name"):
        pypi_requirement(name, "1.0")


@pytest.mark.parametrize(
    "version",
    [
        "2026.8.31",
        "^1.2.3",
        "~1.2",
        ">=1.0.0 <2.0.0",
        ">= 1.0.0",
        "1.x",
        "*",
        "1.2.3 - 2.3.4",
        "^1 || ^2.1",
        "1.0.0-beta.1",
        "1.0.0+build.5",
    ],
)
def test_npm_accepts_semver_versions_and_ranges(version: str) -> None:
    assert npm_spec("@scope/server", version) == f"@scope/server@{version.strip()}"


@pytest.mark.parametrize(
    "version",
    [
        "latest",
        "file:../server",
        "git+https://github.com/owner/repo.git",
        "git+ssh://git@github.com/owner/repo.git",
        "github:owner/repo",
        "owner/repo",
        "https://evil.example/server.tgz",
        "npm:other-package@1.0.0",
        "../local",
        "/abs/path",
        "1.0.0 --registry=https://evil.example",
        "^1; rm -rf /",
        "--ignore-scripts=false",
        "1.2.3.4",
        "01.2.3",
    ],
)
def test_npm_rejects_tags_urls_paths_and_options(version: str) -> None:
    with pytest.raises(ValueError, match="not a semver version or range"):
        npm_spec("server", version)


@pytest.mark.parametrize(
    "name",
    [
        "Server",
        "-server",
        ".server",
        "_server",
        "@scope/",
        "@scope/.x",
        "scope/server",
        "@scope/../server",
        "node_modules",
        "two words",
        "s" * 215,
    ],
)
def test_npm_rejects_names_against_the_rules(name: str) -> None:
    with pytest.raises(ValueError, match="naming rules"):
        npm_spec(name, "1.0.0")


@pytest.mark.parametrize("good", ["mcp-server-time", "server.js", "a+b", "S1"])
def test_executable_names_are_plain_file_names(good: str) -> None:
    assert executable_name(good) == good


@pytest.mark.parametrize("bad", ["../bin/sh", "/bin/sh", "bin/sh", "-x", ".hidden", "..", ""])
def test_executable_names_that_are_paths_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        executable_name(bad)


async def test_an_invalid_package_fails_before_any_installer_runs(tmp_path: Path) -> None:
    provisioner = Provisioner(tmp_path / "cache", uv=str(tmp_path / "no-uv"), npm=None)
    package = Package(source="pypi", name="server", version="--index-url https://evil.example")

    with pytest.raises(ProvisioningError) as caught:
        await provisioner.provision(package)

    error = caught.value
    assert (error.code, error.retryable, error.step) == (
        ErrorCode.INVALID_REQUEST,
        False,
        "validate",
    )
    assert "pypi package 'server'" in error.message
    assert "neither a version" in error.message
    assert not (tmp_path / "cache").exists()
    assert provisioner.installs == 0


def test_redact_strips_registry_credentials() -> None:
    text = redact(
        "GET https://alice:hunter2-secret@registry.example/simple/pkg/ failed\n"
        "//registry.example/:_authToken=npm_abcdef1234567890\n"
        "Authorization: Bearer abc.def.ghi"
    )
    assert "hunter2" not in text
    assert "alice" not in text
    assert "npm_abcdef" not in text
    assert "abc.def" not in text
    assert "https://[REDACTED]@registry.example/simple/pkg/" in text


# --- install life cycle against a fake npm ------------------------------------------------

FAKE_NPM = """#!{python}
import json, os, pathlib, subprocess, sys, time
args = sys.argv[1:]
prefix = pathlib.Path(args[args.index("--prefix") + 1])
name, _, version = args[-1].rpartition("@")
with open({log!r}, "a") as log:
    log.write(json.dumps({{"args": args, "env": sorted(os.environ)}}) + "\\n")
behaviour = {behaviour!r}
if behaviour == "fail":
    sys.stderr.write("npm error code E404\\nnpm error 404 GET https://alice:hunter2-secret@"
                     "registry.example/x\\n//registry.example/:_authToken=npm_tok1234567890\\n")
    sys.exit(1)
if behaviour == "hang":
    child = subprocess.Popen(["sleep", "600"])
    staged = pathlib.Path({log!r} + ".child.tmp")
    staged.write_text(str(child.pid))
    staged.rename({log!r} + ".child")
    time.sleep(600)
package = prefix / "node_modules" / name
package.mkdir(parents=True)
manifest = {{"name": name, "version": version, "bin": {{"fake-server": "server.js"}}}}
(package / "package.json").write_text(json.dumps(manifest))
bins = prefix / "node_modules" / ".bin"
bins.mkdir()
(bins / "fake-server").write_text("#!/bin/sh\\n")
(bins / "fake-server").chmod(0o755)
"""

PACKAGE = Package(source="npm", name="@acme/server", version="1.2.3")


def fake_npm(tmp_path: Path, behaviour: str = "install") -> tuple[str, Path]:
    """A fake `npm` that logs each run and then installs, fails, or hangs with a child."""
    log = tmp_path / f"npm-{behaviour}.log"
    script = tmp_path / f"npm-{behaviour}"
    script.write_text(FAKE_NPM.format(python=sys.executable, log=str(log), behaviour=behaviour))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), log


def child_started(log: Path) -> bool:
    return Path(f"{log}.child").exists()


def child_pid(log: Path) -> int:
    """The pid of the child the hanging fake started."""
    return int(Path(f"{log}.child").read_text())


async def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait until `pid` has exited (a zombie counts: it runs nothing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"the installer's child {pid} outlived its installer")


def runs(log: Path) -> list[dict[str, list[str]]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


async def test_installs_once_and_reuses_the_cached_folder(tmp_path: Path) -> None:
    npm, log = fake_npm(tmp_path)
    provisioner = Provisioner(tmp_path / "cache", npm=npm)

    first = await provisioner.provision(PACKAGE)
    marker = Path(first.root) / MARKER
    written = marker.stat().st_mtime_ns
    second = await provisioner.provision(PACKAGE)

    assert first == second
    assert first.version == "1.2.3"
    assert first.command == str(Path(first.root) / "node_modules" / ".bin" / "fake-server")
    assert Path(first.root).parent == tmp_path / "cache" / "npm"
    assert marker.stat().st_mtime_ns == written
    assert provisioner.installs == 1
    [run] = runs(log)
    assert run["args"][-1] == "@acme/server@1.2.3"
    assert {"--no-audit", "--no-fund", "--omit=dev"} <= set(run["args"])


async def test_a_second_provisioner_on_the_same_cache_reuses_the_install(tmp_path: Path) -> None:
    npm, log = fake_npm(tmp_path)
    await Provisioner(tmp_path / "cache", npm=npm).provision(PACKAGE)

    again = Provisioner(tmp_path / "cache", npm=npm)
    server = await again.provision(PACKAGE)

    assert server.version == "1.2.3"
    assert again.installs == 0
    assert len(runs(log)) == 1


async def test_concurrent_provisions_in_one_process_install_once(tmp_path: Path) -> None:
    npm, log = fake_npm(tmp_path)
    provisioner = Provisioner(tmp_path / "cache", npm=npm)

    results = await asyncio.gather(*(provisioner.provision(PACKAGE) for _ in range(3)))

    assert len(set(results)) == 1
    assert provisioner.installs == 1
    assert len(runs(log)) == 1


async def test_provisioners_sharing_a_cache_dir_install_once(tmp_path: Path) -> None:
    """Two replicas' provisioners: the file lock, not the asyncio lock, keeps them apart."""
    npm, log = fake_npm(tmp_path)
    replicas = [Provisioner(tmp_path / "cache", npm=npm) for _ in range(2)]

    results = await asyncio.gather(*(r.provision(PACKAGE) for r in replicas))

    assert results[0] == results[1]
    assert sorted(r.installs for r in replicas) == [0, 1]
    assert len(runs(log)) == 1


async def test_an_install_without_its_marker_is_redone_from_scratch(tmp_path: Path) -> None:
    npm, log = fake_npm(tmp_path)
    provisioner = Provisioner(tmp_path / "cache", npm=npm)
    first = await provisioner.provision(PACKAGE)
    (Path(first.root) / MARKER).unlink()
    leftover = Path(first.root) / "half-written"
    leftover.write_text("from the interrupted install")

    again = await provisioner.provision(PACKAGE)

    assert again == first
    assert not leftover.exists()
    assert (Path(first.root) / MARKER).is_file()
    assert len(runs(log)) == 2


async def test_a_failed_install_names_the_package_and_step_without_secrets(
    tmp_path: Path,
) -> None:
    npm, log = fake_npm(tmp_path, "fail")
    provisioner = Provisioner(tmp_path / "cache", npm=npm)

    with pytest.raises(ProvisioningError) as caught:
        await provisioner.provision(PACKAGE)

    error = caught.value
    assert (error.package, error.source, error.step) == ("@acme/server", "npm", "npm install")
    assert (error.code, error.retryable) == (ErrorCode.NOT_FOUND, False)
    assert "npm package '@acme/server' (1.2.3)" in error.message
    assert "E404" in error.message
    assert "hunter2" not in error.message
    assert "npm_tok" not in error.message
    assert list((tmp_path / "cache" / "npm").glob("*/")) == []  # the failed folder is gone
    with pytest.raises(ProvisioningError):
        await provisioner.provision(PACKAGE)
    assert len(runs(log)) == 2  # a failure is not cached


@pytest.mark.timeout(60)
async def test_an_install_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    npm, log = fake_npm(tmp_path, "hang")
    provisioner = Provisioner(tmp_path / "cache", npm=npm, timeout=2.0)

    with pytest.raises(ProvisioningError) as caught:
        await provisioner.provision(PACKAGE)

    assert (caught.value.code, caught.value.retryable) == (ErrorCode.TIMEOUT, True)
    assert "within 2 s" in caught.value.message
    await wait_gone(child_pid(log))


@pytest.mark.timeout(60)
async def test_a_cancelled_install_is_killed_and_redone_next_time(tmp_path: Path) -> None:
    hanging, log = fake_npm(tmp_path, "hang")
    task = asyncio.create_task(Provisioner(tmp_path / "cache", npm=hanging).provision(PACKAGE))
    deadline = time.monotonic() + 30
    while not child_started(log):
        assert time.monotonic() < deadline, "the fake installer never started its child"
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_gone(child_pid(log))

    npm, _ = fake_npm(tmp_path)
    provisioner = Provisioner(tmp_path / "cache", npm=npm)
    server = await provisioner.provision(PACKAGE)

    assert provisioner.installs == 1
    assert server.version == "1.2.3"


async def test_installers_see_their_settings_but_not_the_workers_secrets(tmp_path: Path) -> None:
    npm, log = fake_npm(tmp_path)
    environ = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "npm_config_registry": "https://registry.example/",
        "OPENAI_API_KEY": "sk-not-for-install-scripts",
        "KAFKA_SASL_PASSWORD": "nor-this",
    }
    await Provisioner(tmp_path / "cache", npm=npm, environ=environ).provision(PACKAGE)

    [run] = runs(log)
    assert {"PATH", "HOME", "npm_config_registry"} <= set(run["env"])
    assert "OPENAI_API_KEY" not in run["env"]
    assert "KAFKA_SASL_PASSWORD" not in run["env"]


async def test_the_executable_defaults_to_the_only_one_the_package_declares(
    tmp_path: Path,
) -> None:
    npm, _ = fake_npm(tmp_path)
    provisioner = Provisioner(tmp_path / "cache", npm=npm)

    named = await provisioner.provision(PACKAGE.model_copy(update={"bin": "fake-server"}))
    defaulted = await provisioner.provision(PACKAGE)

    assert named == defaulted
    assert Path(named.command).name == "fake-server"


async def test_a_missing_executable_lists_what_the_package_declares(tmp_path: Path) -> None:
    npm, _ = fake_npm(tmp_path)
    provisioner = Provisioner(tmp_path / "cache", npm=npm)

    with pytest.raises(ProvisioningError) as caught:
        await provisioner.provision(PACKAGE.model_copy(update={"bin": "other-server"}))

    error = caught.value
    assert (error.code, error.step) == (ErrorCode.NOT_FOUND, "find executable")
    assert "'other-server'" in error.message
    assert "declares: fake-server" in error.message


async def test_a_missing_installer_is_a_clear_final_error(tmp_path: Path) -> None:
    provisioner = Provisioner(tmp_path / "cache", environ={"PATH": str(tmp_path / "empty")})

    with pytest.raises(ProvisioningError) as caught:
        await provisioner.provision(PACKAGE)

    assert (caught.value.step, caught.value.retryable) == ("locate npm", False)


def test_provisioned_server_is_a_plain_value() -> None:
    server = ProvisionedServer(command="/c/bin/x", version="1.0", root="/c")
    assert server == ProvisionedServer("/c/bin/x", "1.0", "/c")
