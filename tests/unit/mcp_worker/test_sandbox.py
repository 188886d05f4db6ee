"""The sandbox's registry setting and the command line it builds (no process started here;
the escape attempts are in tests/integration/test_mcp_sandbox.py)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from mcp_worker.registry import RegistryError, dumps_registry, parse_registry
from mcp_worker.servers.sandbox import (
    SandboxProfile,
    SandboxUnavailable,
    sandbox_profile,
    sandbox_support,
    sandboxed,
)

SANDBOXES = b"""
mcpServers:
  plain:
    command: mcp-server-time
  trusted:
    command: mcp-server-time
    sandbox: none
  explicit:
    command: mcp-server-time
    sandbox: default
  files:
    command: mcp-server-filesystem
    env: {API_TOKEN: "env:FILES_TOKEN", LOG_LEVEL: info}
    sandbox:
      writable: [/srv/files]
      readable: [/srv/config]
      network: true
      env: [API_TOKEN]
      memory_mb: 512
      cpu_seconds: 600
      open_files: 128
      processes: 16
"""


def _executable(path: Path, text: str = "#!/bin/sh\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def _pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, arg in enumerate(argv) if arg == flag]


def _bound(argv: list[str]) -> dict[str, str]:
    """Destination → flag of every bind in the bwrap part of `argv`."""
    bwrap_part = argv[: argv.index("--")]
    return {
        bwrap_part[i + 2]: arg
        for i, arg in enumerate(bwrap_part)
        if arg in ("--ro-bind", "--bind", "--symlink")
    }


def test_sandbox_setting_none_default_and_a_profile() -> None:
    servers = parse_registry(SANDBOXES).servers

    assert sandbox_profile(servers["plain"].sandbox) == SandboxProfile()
    assert sandbox_profile(servers["explicit"].sandbox) == SandboxProfile()
    assert sandbox_profile(servers["trusted"].sandbox) is None
    assert servers["files"].sandbox == SandboxProfile(
        writable=["/srv/files"],
        readable=["/srv/config"],
        network=True,
        env=["API_TOKEN"],
        memory_mb=512,
        cpu_seconds=600,
        open_files=128,
        processes=16,
    )
    again = parse_registry(dumps_registry(parse_registry(SANDBOXES)).encode())
    assert again.servers == servers


def test_profile_defaults() -> None:
    profile = SandboxProfile()

    assert (profile.writable, profile.readable, profile.network, profile.env) == ([], [], False, [])
    assert (profile.memory_mb, profile.cpu_seconds, profile.open_files, profile.processes) == (
        1024,
        None,
        256,
        64,
    )


@pytest.mark.parametrize(
    ("sandbox", "message"),
    [
        ("{writable: [data]}", "must be an absolute path"),
        ("{readable: ['/']}", "whole filesystem"),
        ("{env: ['NOT-A-NAME']}", "not an environment variable name"),
        ("{memory_mb: 1}", "memory_mb"),
        ("{shell: true}", "shell"),
        ("strict", "sandbox"),
    ],
)
def test_a_bad_sandbox_setting_is_refused_naming_the_field(sandbox: str, message: str) -> None:
    document = f"mcpServers:\n  s:\n    command: x\n    sandbox: {sandbox}\n".encode()

    with pytest.raises(RegistryError, match=message) as caught:
        parse_registry(document)
    assert "s.sandbox" in str(caught.value)


@pytest.mark.parametrize("as_root", [True, False])
def test_secret_values_stay_off_the_command_line_and_only_allowed_names_reach_the_server(
    as_root: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_ONLY_SECRET", "worker-value-123")
    env = {"API_TOKEN": "token-value-456", "DB_PASSWORD": "password-value-789", "MODE": "x"}

    command, argv, server_env = sandboxed(
        "true",
        [],
        env,
        None,
        SandboxProfile(env=["API_TOKEN", "NOT_CONFIGURED"]),
        bwrap="bwrap",
        prlimit="prlimit",
        as_root=as_root,
    )

    line = " ".join([command, *argv])
    for value in ("worker-value-123", "token-value-456", "password-value-789"):
        assert value not in line
    assert server_env == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "API_TOKEN": "token-value-456",
    }
    unset = {name for flag, name in itertools.pairwise(argv) if flag == "--unsetenv"}
    assert {"WORKER_ONLY_SECRET", "DB_PASSWORD", "MODE"} <= unset
    assert unset.isdisjoint(server_env)
    assert "--clearenv" not in argv
    assert "--setenv" not in argv


def test_the_command_line_shape_as_root_drops_to_uid_65534_before_the_limits() -> None:
    command, argv, _ = sandboxed(
        "true",
        ["--flag"],
        {},
        None,
        SandboxProfile(memory_mb=256, cpu_seconds=30, open_files=64, processes=8),
        bwrap="bwrap",
        prlimit="prlimit",
        as_root=True,
    )

    assert os.path.basename(command) == "bwrap"
    inner = argv[argv.index("--") + 1 :]
    assert os.path.basename(inner[0]) == "setpriv"
    assert inner[1:8] == [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--bounding-set=-all",
        "--inh-caps=-all",
        "--no-new-privs",
        "--",
    ]
    limits = inner[8:]
    assert os.path.basename(limits[0]) == "prlimit"
    assert limits[1:8] == [
        f"--data={256 << 20}",
        f"--as={(256 + 2048) << 20}",
        "--nofile=64",
        "--nproc=8",
        "--core=0",
        "--cpu=30",
        "--",
    ]
    assert limits[8:] == ["/usr/bin/true", "--flag"]
    bwrap_part = argv[: argv.index("--")]
    for flag in ("--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session"):
        assert flag in bwrap_part
    assert "--unshare-user" not in bwrap_part
    assert bwrap_part[bwrap_part.index("--cap-drop") + 1] == "ALL"


def test_the_command_line_shape_unprivileged_uses_a_user_namespace() -> None:
    _, argv, _ = sandboxed(
        "true", [], {}, None, SandboxProfile(), bwrap="bwrap", prlimit="prlimit", as_root=False
    )

    bwrap_part = argv[: argv.index("--")]
    assert "--unshare-user" in bwrap_part
    assert "--disable-userns" in bwrap_part
    assert _pairs(bwrap_part, "--uid") == [("65534", "--gid")]
    assert bwrap_part[bwrap_part.index("--cap-drop") + 1] == "ALL"
    assert os.path.basename(argv[argv.index("--") + 1]) == "prlimit"


def test_only_system_folders_are_shared_never_the_whole_host(tmp_path: Path) -> None:
    writable, readable = tmp_path / "out", tmp_path / "in"
    writable.mkdir()
    readable.mkdir()

    _, argv, _ = sandboxed(
        "true",
        [],
        {},
        str(readable),
        SandboxProfile(writable=[str(writable)], readable=[str(readable)]),
        bwrap="bwrap",
        prlimit="prlimit",
        as_root=True,
    )

    bound = _bound(argv)
    assert "/" not in bound
    assert "/etc" not in bound
    assert "/root" not in bound
    assert bound["/usr"] == "--ro-bind"
    assert bound["/etc/ssl"] == "--ro-bind"
    assert "/etc/shadow" not in bound
    assert "/etc/resolv.conf" not in bound
    assert bound[str(writable)] == "--bind"
    assert bound[str(readable)] == "--ro-bind"
    tmpfs = argv.index("--tmpfs")
    assert argv[tmpfs + 1] == "/tmp"
    assert argv[tmpfs - 4 : tmpfs - 2] == ["--perms", "1777"]
    assert argv.index(str(writable)) > tmpfs  # a bind under /tmp comes after the tmpfs
    assert argv[argv.index("--chdir") + 1] == str(readable)
    assert argv[argv.index("--remount-ro") + 1] == "/"


def test_network_allowed_keeps_the_host_network_and_name_resolution() -> None:
    _, argv, _ = sandboxed(
        "true", [], {}, None, SandboxProfile(network=True), bwrap="bwrap", prlimit="prlimit"
    )

    assert "--unshare-net" not in argv
    if os.path.exists("/etc/resolv.conf"):
        assert "/etc/resolv.conf" in _bound(argv)


def test_a_venv_script_binds_the_venv_and_the_base_interpreter_behind_its_symlink(
    tmp_path: Path,
) -> None:
    base = tmp_path / "pythons" / "3.11"
    (base / "lib").mkdir(parents=True)
    real_python = _executable(base / "bin" / "python3.11", "\x7fELF")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(real_python)
    (venv / "pyvenv.cfg").write_text(f"home = {base / 'bin'}\n")
    tool = _executable(venv / "bin" / "server-tool", f"#!{venv / 'bin' / 'python'}\n")
    elsewhere = _executable(tmp_path / "elsewhere" / "x")

    _, argv, env = sandboxed(
        str(tool), [], {}, None, SandboxProfile(), bwrap="bwrap", prlimit="prlimit"
    )

    bound = _bound(argv)
    assert bound[str(venv)] == "--ro-bind"
    assert bound[str(base)] == "--ro-bind"
    assert str(tmp_path) not in bound
    assert str(elsewhere.parent) not in bound
    assert env["PATH"].split(":")[0] == str(venv / "bin")
    assert argv[-1] == str(tool)


def test_a_node_modules_bin_binds_the_tree_and_the_node_found_on_its_path(tmp_path: Path) -> None:
    node = _executable(tmp_path / "node-v20" / "bin" / "node", "\x7fELF")
    (tmp_path / "node-v20" / "lib").mkdir()
    modules = tmp_path / "project" / "node_modules"
    script = _executable(modules / "server-x" / "dist" / "index.js", "#!/usr/bin/env node\n")
    (modules / ".bin").mkdir()
    (modules / ".bin" / "server-x").symlink_to("../server-x/dist/index.js")
    _executable(tmp_path / "project" / ".env", "SECRET=1\n")

    _, argv, env = sandboxed(
        "server-x",
        [],
        {"PATH": f"{modules / '.bin'}:{node.parent}:/usr/bin"},
        None,
        SandboxProfile(),
        bwrap="bwrap",
        prlimit="prlimit",
    )

    bound = _bound(argv)
    assert bound[str(modules)] == "--ro-bind"
    assert bound[str(tmp_path / "node-v20")] == "--ro-bind"
    assert str(tmp_path / "project") not in bound
    assert env["PATH"].split(":")[:2] == [str(modules / ".bin"), str(node.parent)]
    assert script.exists()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"command": "no-such-server-9f3"}, "command 'no-such-server-9f3' not found"),
        ({"bwrap": "/nonexistent/bwrap"}, "not found: bwrap"),
        ({"prlimit": "/nonexistent/prlimit"}, "not found: prlimit"),
        ({"cwd": "/nonexistent/cwd"}, "folder '/nonexistent/cwd' does not exist"),
    ],
)
def test_what_cannot_be_sandboxed_is_refused(change: dict[str, str], reason: str) -> None:
    launch = {"command": "true", "bwrap": "bwrap", "prlimit": "prlimit", "cwd": None} | change

    with pytest.raises(SandboxUnavailable, match=reason) as caught:
        sandboxed(
            launch["command"] or "",
            [],
            {},
            launch["cwd"],
            SandboxProfile(),
            bwrap=launch["bwrap"] or "",
            prlimit=launch["prlimit"] or "",
        )
    assert caught.value.retryable is False


def test_a_declared_folder_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable, match="does not exist"):
        sandboxed(
            "true",
            [],
            {},
            None,
            SandboxProfile(writable=[str(tmp_path / "missing")]),
            bwrap="bwrap",
            prlimit="prlimit",
        )


def test_support_reports_a_missing_bwrap() -> None:
    support = sandbox_support("/nonexistent/bwrap-7c1")

    assert not support.available
    assert "bwrap" in support.reason
    assert "/nonexistent/bwrap-7c1" in support.reason
