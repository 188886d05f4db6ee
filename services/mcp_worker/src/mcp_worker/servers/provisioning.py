"""Stdio servers provisioned from packages: a registry entry names a PyPI or npm package and a
version or range, and the worker installs it once into an isolated, cached folder when the
server is registered. Nothing is fetched when a tool is called (no `npx -y`).

The folder is `cache_dir/<source>/<name>-<sha of name and version>/`. A completion marker is
written last, so a half-finished install (crash, timeout, kill) is redone from scratch. One
install per folder at a time: an asyncio lock within the process, an `fcntl` lock on
`<folder>.lock` across the replicas that share a cache dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import json
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from importlib.metadata import Distribution
from pathlib import Path
from typing import Any

from ferryman.contracts.errors import ErrorCode, FerrymanError
from ferryman_runtime.redaction import REDACTED
from ferryman_runtime.redaction import redact as redact_credentials
from mcp_worker.registry import Package
from mcp_worker.servers.bounded_process import run_bounded
from mcp_worker.servers.package_specs import (
    default_executable,
    executable_name,
    install_folder_name,
    npm_spec,
    pypi_requirement,
)

MARKER = ".ferryman-provisioned.json"
"""Written last in an install folder; its absence means the install is incomplete."""

_NPM_FLAGS = ("--no-audit", "--no-fund", "--omit=dev", "--no-update-notifier")
_LOCK_POLL_SECONDS = 0.2
_TAIL_LINES = 12
_TAIL_CHARS = 2000
_ENV_NAMES = frozenset(
    {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"}
    | {"SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"}
    | {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"}
    | {"http_proxy", "https_proxy", "no_proxy", "all_proxy"}
)
_ENV_PREFIXES = ("UV_", "NPM_CONFIG_", "npm_config_")
"""The installers' own settings (indexes, registries, caches) pass; the worker's other
variables (provider keys, tokens) do not reach install scripts."""

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_INSTALLER_SECRET = re.compile(
    r"(?i)((?:_auth(?:token)?|_password|password|token)\s*[=:]\s*)[^\s\"',]+"
)
_UNREACHABLE = re.compile(
    r"(?i)failed to fetch|error sending request|ECONNREFUSED|ECONNRESET|ENOTFOUND|ETIMEDOUT"
    r"|EAI_AGAIN"
)
_NOT_FOUND = re.compile(
    r"(?i)not found in the package registry|no solution found|\bE404\b|\bETARGET\b"
    r"|no matching version"
)


def redact(text: str) -> str:
    """`text` without credentials: the shared shapes (`ferryman_runtime.redaction`) plus the
    installers' own (registry URLs with `user:password@`, npm's `_authToken=…`)."""
    text = _USERINFO.sub(rf"\1{REDACTED}@", text)
    return redact_credentials(_INSTALLER_SECRET.sub(rf"\1{REDACTED}", text))


@dataclass(frozen=True)
class ProvisionedServer:
    """An installed stdio server."""

    command: str
    """Absolute path of the executable."""
    version: str
    """The version actually installed (the registry may give a range)."""
    root: str
    """The isolated install folder (for sandbox binds)."""


class ProvisioningError(FerrymanError):
    """Provisioning a package failed; report it as that server's health.

    The message names the source, the package, the version asked for and the step, with the
    installer's last stderr lines (credentials in URLs and settings removed).

    Attributes:
        package: the package's name.
        source: `pypi` or `npm`.
        step: what was being done (`validate`, `uv venv`, `uv pip install`, `npm install`, …).
    """

    def __init__(
        self,
        package: Package,
        step: str,
        detail: str,
        *,
        code: ErrorCode = ErrorCode.UNAVAILABLE,
        retryable: bool | None = None,
    ) -> None:
        message = redact(
            f"provisioning {package.source} package {package.name!r} ({package.version})"
            f" failed at {step}: {detail}"
        )
        super().__init__(code, message, retryable=retryable, upstream=package.source)
        self.package = package.name
        self.source = package.source
        self.step = step


@dataclass(frozen=True)
class _Plan:
    package: Package
    argument: str
    """What the installer is asked for: a PEP 508 requirement or `name@range`."""
    root: Path
    executable: str | None


@dataclass(frozen=True)
class _Installed:
    version: str
    bin_dir: str
    """Relative to the install folder."""
    declared: list[str]
    """The executables the package itself declares."""


class Provisioner:
    """Installs packaged stdio servers into isolated folders under `cache_dir`, once.

    Args:
        cache_dir: where install folders live; may be shared by replicas.
        uv: the `uv` executable (default: `uv` on PATH, else `python -m uv`).
        npm: the `npm` executable (default: `npm` on PATH).
        timeout: seconds one install may take (all its steps), and the longest wait for
            another process installing the same package.
        environ: the environment the installers' settings are taken from (default: this
            process's); only PATH, HOME, locale, CA, proxy and installer variables pass.
    """

    def __init__(
        self,
        cache_dir: Path,
        *,
        uv: str | None = None,
        npm: str | None = None,
        timeout: float = 300,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        source = os.environ if environ is None else environ
        self._env = {
            k: v for k, v in source.items() if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)
        }
        path = self._env.get("PATH")
        self._cache_dir = Path(cache_dir).absolute()
        self._uv = [uv] if uv else _locate_uv(path)
        found_npm = npm or shutil.which("npm", path=path)
        self._npm = [found_npm] if found_npm else None
        self._timeout = timeout
        self._locks: dict[Path, asyncio.Lock] = {}
        self._installs = 0

    @property
    def installs(self) -> int:
        """How many installs this provisioner has run (cache hits do not count)."""
        return self._installs

    async def provision(self, package: Package) -> ProvisionedServer:
        """Install `package` unless a complete install is cached, and locate its executable.

        Raises:
            ProvisioningError: the name, version or executable name is invalid
                (`invalid_request`); the installer is missing, fails or times out; the
                package does not provide the executable (`not_found`).
        """
        plan = self._plan(package)
        if (installed := _read_marker(plan.root)) is not None:
            return _server(plan, installed)
        lock = self._locks.setdefault(plan.root, asyncio.Lock())
        async with lock:
            if (installed := _read_marker(plan.root)) is not None:
                return _server(plan, installed)
            async with self._cross_process_lock(plan):
                if (installed := _read_marker(plan.root)) is None:
                    installed = await self._install(plan)
            return _server(plan, installed)

    def _plan(self, package: Package) -> _Plan:
        try:
            if package.source == "pypi":
                argument = pypi_requirement(package.name, package.version)
            else:
                argument = npm_spec(package.name, package.version)
            executable = None if package.bin is None else executable_name(package.bin)
        except ValueError as exc:
            raise ProvisioningError(
                package, "validate", str(exc), code=ErrorCode.INVALID_REQUEST
            ) from None
        folder = install_folder_name(package.name, package.version)
        return _Plan(package, argument, self._cache_dir / package.source / folder, executable)

    @contextlib.asynccontextmanager
    async def _cross_process_lock(self, plan: _Plan) -> AsyncIterator[None]:
        lock_path = plan.root.with_name(plan.root.name + ".lock")
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ProvisioningError(plan.package, "lock", _os_detail(exc)) from None
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if loop.time() >= deadline:
                        raise ProvisioningError(
                            plan.package,
                            "wait for another installer",
                            f"the install folder stayed locked for {self._timeout:g} s",
                            code=ErrorCode.TIMEOUT,
                        ) from None
                    # flock has no awaitable form; polling keeps the wait cancellable.
                    await asyncio.sleep(_LOCK_POLL_SECONDS)
            yield
        finally:
            os.close(fd)

    async def _install(self, plan: _Plan) -> _Installed:
        self._installs += 1
        deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            await asyncio.to_thread(_remove, plan.root)
        except OSError as exc:
            raise ProvisioningError(plan.package, "clear folder", _os_detail(exc)) from None
        try:
            if plan.package.source == "pypi":
                installed = await self._install_pypi(plan, deadline)
            else:
                installed = await self._install_npm(plan, deadline)
        except ProvisioningError:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(_remove, plan.root)
            raise
        marker = {
            "version": installed.version,
            "bin_dir": installed.bin_dir,
            "declared": installed.declared,
            "package": plan.package.model_dump(),
        }
        try:
            staged = plan.root / (MARKER + ".tmp")
            staged.write_text(json.dumps(marker), encoding="utf-8")
            staged.replace(plan.root / MARKER)
        except OSError as exc:
            raise ProvisioningError(plan.package, "write marker", _os_detail(exc)) from None
        return installed

    async def _install_pypi(self, plan: _Plan, deadline: float) -> _Installed:
        if self._uv is None:
            raise ProvisioningError(
                plan.package,
                "locate uv",
                "uv is not installed (PATH or python -m uv)",
                retryable=False,
            )
        root = str(plan.root)
        venv = [*self._uv, "venv", "--no-project", "--python", sys.executable, root]
        await self._run(plan, "uv venv", venv, deadline)
        python = str(plan.root / "bin" / "python")
        install = [*self._uv, "pip", "install", "--python", python, plan.argument]
        await self._run(plan, "uv pip install", install, deadline)
        site_packages = [str(p) for p in plan.root.glob("lib/python*/site-packages")]
        found = list(Distribution.discover(name=plan.package.name, path=site_packages))
        if not found:
            raise ProvisioningError(
                plan.package, "read version", "the installed distribution was not found"
            )
        dist = found[0]
        declared = {e.name for e in dist.entry_points if e.group.endswith("_scripts")}
        declared |= {f.name for f in dist.files or [] if f.parent.name == "bin"}
        return _Installed(dist.version, "bin", sorted(declared))

    async def _install_npm(self, plan: _Plan, deadline: float) -> _Installed:
        if self._npm is None:
            raise ProvisioningError(
                plan.package, "locate npm", "npm is not on PATH", retryable=False
            )
        install = [*self._npm, "install", "--prefix", str(plan.root), *_NPM_FLAGS, plan.argument]
        try:
            plan.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProvisioningError(plan.package, "create folder", _os_detail(exc)) from None
        await self._run(plan, "npm install", install, deadline)
        manifest_path = plan.root / "node_modules" / plan.package.name / "package.json"
        try:
            manifest: Any = json.loads(manifest_path.read_text(encoding="utf-8"))
            version = manifest["version"]
            if not isinstance(version, str):
                raise TypeError("version is not a string")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ProvisioningError(
                plan.package, "read version", f"package.json unreadable ({type(exc).__name__})"
            ) from None
        bins: Any = manifest.get("bin")
        if isinstance(bins, str):
            declared = [default_executable("npm", plan.package.name)]
        elif isinstance(bins, dict):
            declared = sorted(str(name) for name in bins)  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
        else:
            declared = []
        return _Installed(version, "node_modules/.bin", declared)

    async def _run(self, plan: _Plan, step: str, argv: list[str], deadline: float) -> None:
        try:
            done = await run_bounded(argv, env=self._env, cwd=plan.root.parent, deadline=deadline)
        except TimeoutError:
            detail = f"the install did not finish within {self._timeout:g} s"
            raise ProvisioningError(plan.package, step, detail, code=ErrorCode.TIMEOUT) from None
        except OSError as exc:
            detail = f"cannot start it: {_os_detail(exc)}"
            raise ProvisioningError(plan.package, step, detail, retryable=False) from None
        if done.returncode != 0:
            tail = _tail(done.stderr) or _tail(done.stdout)
            code = ErrorCode.UNAVAILABLE
            if not _UNREACHABLE.search(tail) and _NOT_FOUND.search(tail):
                code = ErrorCode.NOT_FOUND
            detail = f"exit status {done.returncode}: {tail}"
            raise ProvisioningError(plan.package, step, detail, code=code)


def _locate_uv(path: str | None) -> list[str] | None:
    if found := shutil.which("uv", path=path):
        return [found]
    if importlib.util.find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    return None


def _read_marker(root: Path) -> _Installed | None:
    """The completed install in `root`, or None when there is none (or it is damaged)."""
    try:
        data: Any = json.loads((root / MARKER).read_text(encoding="utf-8"))
        installed = _Installed(str(data["version"]), str(data["bin_dir"]), list(data["declared"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return installed if (root / installed.bin_dir).is_dir() else None


def _server(plan: _Plan, installed: _Installed) -> ProvisionedServer:
    """The server's executable: the one the entry names, else the package's name, else the
    package's only declared executable."""
    bin_dir = plan.root / installed.bin_dir
    default = default_executable(plan.package.source, plan.package.name)
    if plan.executable is not None:
        candidates = [plan.executable]
    else:
        candidates = [default, *(installed.declared if len(installed.declared) == 1 else [])]
    for name in candidates:
        path = bin_dir / name
        if path.is_file() and os.access(path, os.X_OK):
            return ProvisionedServer(str(path), installed.version, str(plan.root))
    offered = ", ".join(installed.declared) or "none"
    raise ProvisioningError(
        plan.package,
        "find executable",
        f"no executable {plan.executable or default!r} in {installed.bin_dir}; the package"
        f" declares: {offered} (set `bin` to one of them)",
        code=ErrorCode.NOT_FOUND,
    )


def _remove(root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)


def _tail(output: bytes) -> str:
    lines = output.decode("utf-8", errors="replace").strip().splitlines()
    return redact("\n".join(lines[-_TAIL_LINES:])[-_TAIL_CHARS:])


def _os_detail(exc: OSError) -> str:
    return f"{type(exc).__name__}: {exc.strerror or exc}"
