"""Hot reload of a worker's configuration file: poll, validate, swap atomically.

The file is polled rather than watched with inotify: a Kubernetes ConfigMap update
swaps the `..data` symlink and network filesystems drop events, while reading a small
file once a second costs nothing. The version is the sha256 of the bytes (12 hex
chars), so every replica serving the same content reports the same version.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["ConfigWatcher", "content_version"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

_REREAD_EVERY = 10
"""Polls after which the file is read even though its stat looks unchanged."""

_Signature = tuple[int, int, int]


def content_version(data: bytes) -> str:
    """The version of a configuration: the first 12 hex chars of the sha256 of its bytes."""
    return hashlib.sha256(data).hexdigest()[:12]


def _signature(stat: os.stat_result) -> _Signature:
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def _read(path: Path, skip_if: _Signature | None) -> tuple[_Signature, bytes] | None:
    # Path.stat follows symlinks, so a ConfigMap's `..data` swap shows up as a new inode.
    before = _signature(path.stat())
    if before == skip_if:
        return None
    data = path.read_bytes()
    if _signature(path.stat()) != before or len(data) != before[1]:
        return None  # written while we read: retry next poll rather than risk a torn file
    return before, data


class _ConfigMetrics:
    """The config families of one registry, shared by its watchers (one per file)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.info = Gauge(
            "ferryman_config_info",
            "1 for the active version (content hash) of each hot-reloaded configuration file.",
            ["config", "version"],
            registry=registry,
        )
        self.reloads = Counter(
            "ferryman_config_reloads",
            "New versions of a configuration file, by outcome (applied or rejected).",
            ["config", "outcome"],
            registry=registry,
        )
        self.last_reload = Gauge(
            "ferryman_config_last_reload_timestamp_seconds",
            "Unix time the active version of a configuration file was applied.",
            ["config"],
            registry=registry,
        )


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, _ConfigMetrics] = weakref.WeakKeyDictionary()


def _metrics_of(registry: CollectorRegistry) -> _ConfigMetrics:
    metrics = _METRICS.get(registry)
    if metrics is None:
        metrics = _METRICS[registry] = _ConfigMetrics(registry)
    return metrics


def _one_line(error: BaseException | str) -> str:
    return "; ".join(part.strip() for part in str(error).splitlines() if part.strip())


class ConfigWatcher(Generic[T]):
    """Keeps a worker serving the newest valid version of one configuration file.

    Args:
        path: the file (symlinks are followed on every poll).
        load: parses and validates bytes; raises ValueError on invalid content.
        apply: `apply(config, version)` installs a validated config; it should only swap
            a reference, so in-flight work keeps the config it started with.
        registry: where the metrics go: `ferryman_config_info{config,version}` (1 for the
            active version only), `ferryman_config_reloads_total{config,outcome}` (applied
            or rejected) and `ferryman_config_last_reload_timestamp_seconds{config}` (last
            apply); watchers of different files share these families.
        name: names the file in metrics (the `config` label: `routing`, `registry`,
            `policy`) and logs.
        interval: seconds between polls in `run()`.
    """

    def __init__(
        self,
        path: Path,
        load: Callable[[bytes], T],
        apply: Callable[[T, str], None],
        *,
        registry: CollectorRegistry,
        name: str = "config",
        interval: float = 1.0,
    ) -> None:
        self._path = path
        self._load = load
        self._apply = apply
        self._name = name
        self._interval = interval
        self._lock = asyncio.Lock()
        self._version: str | None = None
        self._loaded_at: datetime | None = None
        self._signature: _Signature | None = None
        self._unread_polls = 0
        self._rejected_key: str | None = None
        self._rejected_version: str | None = None
        self._last_error: str | None = None
        metrics = _metrics_of(registry)
        self._version_info = metrics.info
        self._reloads = metrics.reloads
        for outcome in ("applied", "rejected"):
            self._reloads.labels(config=name, outcome=outcome)
        self._last_reload = metrics.last_reload.labels(config=name)

    @property
    def version(self) -> str | None:
        """The active version, or None before the first apply."""
        return self._version

    def load_initial(self) -> T:
        """Read, validate and apply the file once, at startup.

        Raises:
            ValueError: the file is unreadable or invalid; the message names the path
                (and the version when the file was read), so the worker refuses to start.
        """
        try:
            result = None
            for _ in range(3):
                result = _read(self._path, None)
                if result is not None:
                    break
        except OSError as exc:
            raise ValueError(f"{self._name} {self._path}: cannot read: {exc}") from exc
        if result is None:
            raise ValueError(f"{self._name} {self._path}: kept changing while being read")
        signature, data = result
        version = content_version(data)
        try:
            config = self._load(data)
        except ValueError as exc:
            raise ValueError(
                f"{self._name} {self._path}: invalid version {version}: {_one_line(exc)}"
            ) from exc
        self._apply(config, version)
        self._signature = signature
        self._activate(version)
        return config

    def status(self) -> dict[str, Any]:
        """The active version and the last rejection, for `/health`."""
        return {
            "path": str(self._path),
            "version": self._version,
            "loaded_at": self._loaded_at.isoformat() if self._loaded_at else None,
            "last_error": self._last_error,
            "rejected_version": self._rejected_version,
        }

    async def check_now(self) -> bool:
        """Poll the file once; return True if a new version was applied.

        An unreadable or invalid file, or one whose `apply` raised, is rejected: logged
        once per bad version and counted, while the active config keeps serving.
        """
        async with self._lock:
            force = self._unread_polls >= _REREAD_EVERY - 1
            try:
                # In a thread: a stalled network filesystem must not stall in-flight work.
                result = await asyncio.to_thread(
                    _read, self._path, None if force else self._signature
                )
            except OSError as exc:
                self._signature = None
                self._reject(f"unreadable: {exc}", None, f"cannot read: {exc}")
                return False
            if result is None:
                self._unread_polls += 1
                return False
            self._signature, data = result
            self._unread_polls = 0
            return self._consider(data)

    async def run(self) -> None:
        """Poll every `interval` seconds until cancelled; never raises otherwise."""
        while True:
            try:
                await self.check_now()
            except Exception:  # a bug here must not end hot reload for the worker's lifetime
                logger.exception("%s %s: poll failed", self._name, self._path)
            await asyncio.sleep(self._interval)

    def _consider(self, data: bytes) -> bool:
        version = content_version(data)
        if version == self._version:
            self._rejected_key = self._rejected_version = self._last_error = None
            return False
        if version == self._rejected_key:
            return False
        try:
            config = self._load(data)
        except Exception as exc:  # the contract says ValueError; nothing else is servable either
            self._reject(version, version, _one_line(exc))
            return False
        try:
            self._apply(config, version)
        except Exception as exc:
            self._reject(version, version, f"apply failed: {_one_line(exc)}")
            return False
        logger.info(
            "%s %s: applied version %s (was %s)", self._name, self._path, version, self._version
        )
        self._activate(version)
        self._reloads.labels(config=self._name, outcome="applied").inc()
        return True

    def _activate(self, version: str) -> None:
        if self._version is not None:
            self._version_info.remove(self._name, self._version)
        self._version_info.labels(config=self._name, version=version).set(1)
        self._version = version
        self._loaded_at = datetime.now(UTC)
        self._last_reload.set(self._loaded_at.timestamp())
        self._rejected_key = self._rejected_version = self._last_error = None

    def _reject(self, key: str, version: str | None, error: str) -> None:
        if key == self._rejected_key:
            return
        self._rejected_key, self._rejected_version, self._last_error = key, version, error
        self._reloads.labels(config=self._name, outcome="rejected").inc()
        logger.error(
            "%s %s: rejected version %s, still serving version %s: %s",
            self._name,
            self._path,
            version or "(unreadable)",
            self._version,
            error,
        )
