"""Sandboxing stdio MCP servers: bubblewrap namespaces plus `prlimit` resource limits.

`sandboxed()` turns a server's command line into

    bwrap <namespaces, mounts> [setpriv <drop to uid>] prlimit <limits> -- <command> <args>

The server sees only the system folders, its own installation (venv, interpreter prefix,
`node_modules` tree), its cwd and the folders its profile declares; `/tmp` is a private
tmpfs; the network is a private loopback unless the profile allows it; it runs as uid 65534
with no capabilities; its environment holds only PATH, HOME, LANG and the allow-listed
variables.

Three choices differ from the textbook `prlimit … bwrap --clearenv --setenv …` line, on
purpose:

- Environment values never appear on a command line (`/proc/<pid>/cmdline` is world
  readable). The allowed values travel in bwrap's own environment, which the caller passes
  to the spawn; `--unsetenv` removes, by name, every other variable the spawner may merge in.
- `prlimit` runs inside the sandbox, and a root worker drops to host uid 65534 with
  `setpriv` instead of mapping uid 65534 onto host root in a user namespace: the kernel
  never enforces RLIMIT_NPROC on host root (a fork bomb under `--nproc=64` made 500
  processes), and the limit set inside counts the sandbox's processes only (in user-namespace
  mode) instead of every process of the worker's uid.
- Memory is limited by RLIMIT_DATA (`memory_mb`), with RLIMIT_AS only as a higher backstop:
  see `ADDRESS_SPACE_SLACK_MB`.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ferryman.contracts.errors import ErrorCode, FerrymanError

NOBODY = 65534
SAFE_PATH = ("/usr/local/bin", "/usr/bin", "/bin")
SYSTEM_PATHS = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/alternatives",
    "/etc/ca-certificates",
    "/etc/ssl",
    "/etc/pki",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/mime.types",
)
"""Read-only for every server: programs, libraries and non-secret system configuration."""
NETWORK_PATHS = ("/etc/resolv.conf", "/etc/host.conf", "/etc/gai.conf")
"""Read-only for servers allowed the network (name resolution)."""
PROBE_TIMEOUT = 10.0
ADDRESS_SPACE_SLACK_MB = 2048
"""RLIMIT_AS above `memory_mb`: a backstop for shared mappings, which RLIMIT_DATA does not
count. Not RLIMIT_AS alone: V8 reserves about 1 GiB of address space beyond its heap, and
Node servers abort at start under `--as=1G` (seen with server-filesystem)."""
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SandboxUnavailable(FerrymanError):
    """The server cannot be started sandboxed (bwrap missing or unusable, the command or a
    declared folder missing); the worker refuses to start it unless it says `sandbox: none`."""

    def __init__(self, reason: str) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, f"sandbox unavailable: {reason}", retryable=False)
        self.reason = reason


def _folder(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} must be an absolute path")
    normal = os.path.normpath(value)
    if normal == "/":
        raise ValueError("the whole filesystem cannot be shared with a server")
    return normal


def _env_name(value: str) -> str:
    if _ENV_NAME.fullmatch(value) is None:
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


Folder = Annotated[str, AfterValidator(_folder)]
EnvName = Annotated[str, AfterValidator(_env_name)]


class SandboxProfile(BaseModel):
    """What one sandboxed stdio server may use (the registry's `sandbox:` mapping)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    writable: list[Folder] = Field(default_factory=list[str])
    """Folders the server may write, bind-mounted read-write at the same path. When the
    worker runs as root they must be writable by uid 65534."""
    readable: list[Folder] = Field(default_factory=list[str])
    """Extra folders the server may read (its script's folder, data)."""
    network: bool = False
    """Whether the server shares the host's network (default: a private loopback only)."""
    env: list[EnvName] = Field(default_factory=list[str])
    """Names of the server's configured variables it receives; all others are removed."""
    memory_mb: int = Field(default=1024, ge=64, le=1 << 20)
    """Private memory (RLIMIT_DATA: heap, buffers, stacks), MiB; also the size of its private
    /tmp. The address space (RLIMIT_AS) is capped `ADDRESS_SPACE_SLACK_MB` higher."""
    cpu_seconds: int | None = Field(default=None, ge=1)
    """CPU time over the server's whole life (RLIMIT_CPU); None: unlimited."""
    open_files: int = Field(default=256, ge=16, le=1 << 20)
    """Open file descriptors (RLIMIT_NOFILE)."""
    processes: int = Field(default=64, ge=1, le=1 << 16)
    """Processes and threads (RLIMIT_NPROC)."""


SandboxSetting = Literal["default", "none"] | SandboxProfile
"""The registry's `sandbox:` value."""


def sandbox_profile(setting: SandboxSetting) -> SandboxProfile | None:
    """The profile a registry setting means (None for `sandbox: none`)."""
    if setting == "none":
        return None
    return SandboxProfile() if setting == "default" else setting


@dataclass
class _Mounts:
    """bwrap filesystem operations by destination, emitted parents first."""

    ops: dict[str, tuple[str, ...]] = field(default_factory=dict[str, tuple[str, ...]])
    binds: set[str] = field(default_factory=set[str])
    links: set[str] = field(default_factory=set[str])

    def bind(self, source: str, dest: str, *, writable: bool = False) -> None:
        dest = os.path.normpath(dest)
        if _under(dest, self.links) or (not writable and self.ops.get(dest, ("",))[0] == "--bind"):
            return
        flag = "--bind" if writable else "--ro-bind"
        self.ops[dest] = (flag, os.path.realpath(source), dest)
        self.binds.add(dest)

    def system(self, path: str) -> None:
        if os.path.islink(path) and _under(os.path.realpath(path), {"/usr"}):
            self.ops[path] = ("--symlink", os.readlink(path), path)
            self.links.add(path)
        elif os.path.exists(path):
            self.bind(path, path)

    def argv(self, tmp_bytes: int) -> list[str]:
        ops = dict(self.ops)
        ops["/tmp"] = ("--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/tmp")
        for dest in self.binds:
            for parent in PurePosixPath(dest).parents:
                name = str(parent)
                if name != "/" and not _under(name, self.binds | self.links) and name not in ops:
                    # bwrap creates missing parents 0700; uid 65534 must be able to pass.
                    ops[name] = ("--perms", "0755", "--dir", name)
        order = sorted(ops, key=lambda dest: (len(PurePosixPath(dest).parts), dest))
        head = ["--proc", "/proc", "--dev", "/dev"]
        return head + [arg for dest in order for arg in ops[dest]] + ["--remount-ro", "/"]


def _under(path: str, roots: set[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _which(program: str, search_path: str | None, cwd: str | None) -> str:
    if "/" in program:
        found = os.path.join(cwd or os.getcwd(), program)
        return os.path.abspath(found) if os.access(found, os.X_OK) else ""
    return os.path.abspath(found) if (found := shutil.which(program, path=search_path)) else ""


def _installation(path: str, mounts: _Mounts, search_path: str | None, depth: int = 0) -> list[str]:
    """Bind what running `path` needs: every link of its symlink chain, the installation each
    lives in, and its `#!` interpreter. Returns folders to put first on PATH."""
    chain = [path]
    while os.path.islink(chain[-1]) and len(chain) < 40:
        chain.append(
            os.path.normpath(os.path.join(os.path.dirname(chain[-1]), os.readlink(chain[-1])))
        )
    chain.append(os.path.realpath(path))
    for link in chain:
        if not _under(link, {"/usr", "/bin", "/sbin", "/lib", "/lib64"}):
            mounts.bind(root := _installation_root(link) or link, root)
            _bind_base_interpreter(root, mounts)
    return [] if depth >= 3 else _interpreter(chain[-1], mounts, search_path, depth)


def _installation_root(path: str) -> str | None:
    parts = PurePosixPath(path).parts
    if "node_modules" in parts:
        return str(PurePosixPath(*parts[: parts.index("node_modules") + 1]))
    folder = Path(path).parent
    if folder.name not in ("bin", "sbin"):
        return None
    prefix = folder.parent
    home = Path.home()
    if prefix in (Path("/"), home, Path("/root")) or prefix.parent == Path("/home"):
        return None  # ~/bin: a home folder is no installation
    if (prefix / "pyvenv.cfg").is_file() or any((prefix / d).is_dir() for d in ("lib", "lib64")):
        return str(prefix)
    return None


def _bind_base_interpreter(venv: str, mounts: _Mounts) -> None:
    config = Path(venv) / "pyvenv.cfg"
    if not config.is_file():
        return
    for line in config.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition("=")
        home = Path(value.strip())
        if (
            key.strip() == "home"
            and home.is_absolute()
            and not _under(str(home), {"/usr", "/bin"})
            and _installation_root(str(home / "python"))
        ):
            mounts.bind(str(home.parent), str(home.parent))


def _interpreter(script: str, mounts: _Mounts, search_path: str | None, depth: int) -> list[str]:
    try:
        with open(script, "rb") as file:
            first = file.read(256).split(b"\n", 1)[0]
    except OSError:
        return []
    if not first.startswith(b"#!"):
        return []
    words = first[2:].decode(errors="replace").split()
    if not words:
        return []
    program, rest = words[0], words[1:]
    if os.path.basename(program) == "env":
        names = [word for word in rest if not word.startswith("-")]
        if not names or not (program := _which(names[0], search_path, None)):
            return []
        path_first = [os.path.dirname(program)]
    else:
        path_first = []
    return path_first + _installation(program, mounts, search_path, depth + 1)


def sandboxed(
    command: str,
    args: list[str],
    env: dict[str, str],
    cwd: str | None,
    profile: SandboxProfile,
    *,
    bwrap: str,
    prlimit: str,
    setpriv: str = "setpriv",
    uid: int = NOBODY,
    as_root: bool | None = None,
) -> tuple[str, list[str], dict[str, str]]:
    """The sandboxed form of a stdio server's launch: `(command, args, env)` to spawn with
    the same `cwd` (e.g. as `StdioServerParameters(command=…, args=…, env=…, cwd=cwd)`).

    Args:
        command: the server's executable (a name looked up on its PATH, or a path).
        args: its arguments.
        env: its configured environment, references already resolved.
        cwd: its working folder (bound read-only unless declared writable).
        profile: what it may use.
        bwrap: the bubblewrap executable (name or path).
        prlimit: the `prlimit` executable (name or path).
        setpriv: the `setpriv` executable, used when the worker runs as root.
        uid: the uid the server runs as; as root, its host uid too (give servers distinct
            uids to keep their process counts apart).
        as_root: whether the worker runs as root (default: its effective uid says).

    Raises:
        SandboxUnavailable: a tool, the command, the cwd or a declared folder is missing.
    """
    root = os.geteuid() == 0 if as_root is None else as_root
    tools = {"bwrap": bwrap, "prlimit": prlimit} | ({"setpriv": setpriv} if root else {})
    found = {name: _which(program, None, None) for name, program in tools.items()}
    if missing := [f"{name} ({tools[name]!r})" for name, path in found.items() if not path]:
        raise SandboxUnavailable(f"not found: {', '.join(missing)}")
    search_path = env.get("PATH", os.environ.get("PATH"))
    executable = _which(command, search_path, cwd)
    if not executable:
        raise SandboxUnavailable(f"command {command!r} not found or not executable")
    # Absolute again: a caller may have extended the profile without validation.
    writable = [os.path.abspath(folder) for folder in profile.writable]
    readable = [os.path.abspath(folder) for folder in profile.readable]
    for folder in [*writable, *readable, *([cwd] if cwd else [])]:
        if not os.path.isdir(folder):
            raise SandboxUnavailable(f"folder {folder!r} does not exist")

    mounts = _Mounts()
    for path in (*SYSTEM_PATHS, *(NETWORK_PATHS if profile.network else ())):
        mounts.system(path)
    for helper in (found["prlimit"], found.get("setpriv")):
        if helper:
            _installation(helper, mounts, None)
    path_first = _installation(executable, mounts, search_path)
    if not _under(os.path.dirname(executable), {*SAFE_PATH, "/usr"}):
        path_first.insert(0, os.path.dirname(executable))
    for folder in readable:
        mounts.bind(folder, folder)
    if cwd and not _under(os.path.abspath(cwd), set(writable)):
        mounts.bind(cwd, os.path.abspath(cwd))
    for folder in writable:
        mounts.bind(folder, folder, writable=True)

    sandbox_env = {
        "PATH": ":".join(dict.fromkeys([*path_first, *SAFE_PATH])),
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
    } | {name: env[name] for name in profile.env if name in env}
    unset = sorted((set(os.environ) | set(env)) - set(sandbox_env))

    namespaces = ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
    namespaces += [] if profile.network else ["--unshare-net"]
    if root:
        # No user namespace: see the module docstring (RLIMIT_NPROC and host root).
        privileges = ["--cap-drop", "ALL"]
        privileges += [
            arg for cap in ("SETUID", "SETGID", "SETPCAP") for arg in ("--cap-add", f"CAP_{cap}")
        ]
        drop = [found["setpriv"], f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        drop += ["--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--"]
    else:
        privileges = ["--unshare-user", "--disable-userns", "--uid", str(uid), "--gid", str(uid)]
        privileges += ["--cap-drop", "ALL"]
        drop = []
    limits = [f"--data={profile.memory_mb << 20}"]
    limits += [f"--as={(profile.memory_mb + ADDRESS_SPACE_SLACK_MB) << 20}"]
    limits += [f"--nofile={profile.open_files}"]
    limits += [f"--nproc={profile.processes}", "--core=0"]
    limits += [f"--cpu={profile.cpu_seconds}"] if profile.cpu_seconds is not None else []

    argv = [*namespaces, *privileges, "--die-with-parent", "--new-session"]
    argv += mounts.argv(profile.memory_mb << 20)
    argv += [arg for name in unset for arg in ("--unsetenv", name)]
    argv += ["--chdir", os.path.abspath(cwd) if cwd else "/tmp", "--"]
    argv += [*drop, found["prlimit"], *limits, "--", executable, *args]
    return found["bwrap"], argv, sandbox_env


@dataclass(frozen=True)
class SandboxSupport:
    """Whether stdio servers can be sandboxed here, and with which executables."""

    available: bool
    reason: str
    """Why not (empty when available)."""
    bwrap: str = "bwrap"
    prlimit: str = "prlimit"


@functools.cache
def sandbox_support(bwrap: str | None = None, prlimit: str | None = None) -> SandboxSupport:
    """Check once (cached per arguments) that a sandbox can be built and started: runs
    `/usr/bin/true` in the same sandbox a server gets, with a short timeout. Blocks for up
    to 10 s: call it at start-up, or in a thread.

    Args:
        bwrap: the bubblewrap executable (default: `bwrap` on PATH).
        prlimit: the `prlimit` executable (default: `prlimit` on PATH).
    """
    tools = SandboxSupport(True, "", bwrap or "bwrap", prlimit or "prlimit")
    try:
        command, args, env = sandboxed(
            "true", [], {}, None, SandboxProfile(), bwrap=tools.bwrap, prlimit=tools.prlimit
        )
        probe = subprocess.run(
            [command, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except SandboxUnavailable as exc:
        return SandboxSupport(False, exc.reason, tools.bwrap, tools.prlimit)
    except (OSError, subprocess.SubprocessError) as exc:
        return SandboxSupport(
            False, f"the probe failed: {type(exc).__name__}: {exc}", tools.bwrap, tools.prlimit
        )
    if probe.returncode != 0:
        detail = probe.stderr.decode(errors="replace").strip()[-300:]
        reason = f"bwrap cannot create the sandbox (exit {probe.returncode}): {detail}"
        return SandboxSupport(False, reason, tools.bwrap, tools.prlimit)
    return tools
