"""Hot reload of a configuration file: versions, rejection, metrics and the poll loop."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from ferryman_runtime.config_watch import ConfigWatcher

CONFIG = "config"
VALID_A = b"model: alpha\n"
VALID_B = b"model: bravo-longer\n"
INVALID = b"nothing: here\n"


def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _load(data: bytes) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {exc}") from exc
    if not isinstance(doc, dict) or "model" not in doc:
        raise ValueError("expected a mapping with a 'model' key")
    return doc


def _write(path: Path, data: bytes) -> None:
    # Coarse kernel timestamps can repeat within a test, so move mtime on explicitly.
    old = path.stat().st_mtime_ns if path.exists() else 0
    path.write_bytes(data)
    os.utime(path, ns=(old + 1_000_000_000, old + 1_000_000_000))


def _rewrite_keeping_stat(path: Path, data: bytes) -> None:
    """Change the content but keep (mtime, size, inode), as some filesystems do."""
    before = path.stat()
    assert len(data) == before.st_size
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


class Target:
    """Stands in for the worker: `apply` swaps the reference and records each call."""

    def __init__(self) -> None:
        self.config: dict[str, Any] | None = None
        self.applied: list[str] = []
        self.event = asyncio.Event()

    def apply(self, config: dict[str, Any], version: str) -> None:
        self.config = config
        self.applied.append(version)
        self.event.set()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def target() -> Target:
    return Target()


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "routing.yaml"
    _write(path, VALID_A)
    return path


def _watcher(
    path: Path, target: Target, registry: CollectorRegistry, interval: float = 1.0
) -> ConfigWatcher[dict[str, Any]]:
    return ConfigWatcher(path, _load, target.apply, registry=registry, interval=interval)


def _reloads(registry: CollectorRegistry, outcome: str) -> float | None:
    return registry.get_sample_value(
        "ferryman_config_reloads_total", {"config": CONFIG, "outcome": outcome}
    )


def _version_labels(registry: CollectorRegistry) -> list[str]:
    return [
        sample.labels["version"]
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "ferryman_config_info" and sample.labels["config"] == CONFIG
    ]


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_initial_load_applies_the_file_under_its_content_hash(
    config_path: Path, target: Target, registry: CollectorRegistry
) -> None:
    watcher = _watcher(config_path, target, registry)

    config = watcher.load_initial()

    assert config == {"model": "alpha"}
    assert target.applied == [_version(VALID_A)]
    assert watcher.version == _version(VALID_A)
    status = watcher.status()
    assert status["path"] == str(config_path)
    assert status["version"] == _version(VALID_A)
    assert status["loaded_at"] is not None
    assert status["loaded_at"].endswith("+00:00")
    assert status["last_error"] is None
    assert registry.get_sample_value(
        "ferryman_config_info", {"config": CONFIG, "version": _version(VALID_A)}
    ) == (1.0)
    last_reload = "ferryman_config_last_reload_timestamp_seconds"
    assert (registry.get_sample_value(last_reload, {"config": CONFIG}) or 0) > 0


def test_initial_load_of_an_invalid_file_raises_naming_the_path(
    config_path: Path, target: Target, registry: CollectorRegistry
) -> None:
    _write(config_path, INVALID)
    watcher = _watcher(config_path, target, registry)

    with pytest.raises(ValueError, match="'model' key") as caught:
        watcher.load_initial()

    assert str(config_path) in str(caught.value)
    assert _version(INVALID) in str(caught.value)
    assert target.applied == []
    assert watcher.version is None


def test_initial_load_of_a_missing_file_raises_naming_the_path(
    tmp_path: Path, target: Target, registry: CollectorRegistry
) -> None:
    path = tmp_path / "absent.yaml"
    watcher = _watcher(path, target, registry)

    with pytest.raises(ValueError, match="cannot read") as caught:
        watcher.load_initial()

    assert str(path) in str(caught.value)


async def test_a_changed_file_is_applied_once_and_unchanged_content_is_not_reapplied(
    config_path: Path, target: Target, registry: CollectorRegistry
) -> None:
    watcher = _watcher(config_path, target, registry)
    watcher.load_initial()

    assert await watcher.check_now() is False
    _write(config_path, VALID_B)
    assert await watcher.check_now() is True
    _write(config_path, VALID_B)  # touched: read again, same hash
    assert await watcher.check_now() is False

    assert target.applied == [_version(VALID_A), _version(VALID_B)]
    assert target.config == {"model": "bravo-longer"}
    assert watcher.version == _version(VALID_B)
    assert _reloads(registry, "applied") == 1


async def test_an_invalid_change_is_rejected_and_logged_once_then_a_fix_is_applied(
    config_path: Path,
    target: Target,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ferryman_runtime.config_watch")
    watcher = _watcher(config_path, target, registry)
    watcher.load_initial()

    _write(config_path, INVALID)
    for _ in range(2 * 10 + 1):  # past the forced re-read, which must not log again
        assert await watcher.check_now() is False

    assert target.config == {"model": "alpha"}
    assert watcher.version == _version(VALID_A)
    assert _reloads(registry, "rejected") == 1
    [error] = _errors(caplog)
    message = error.getMessage()
    assert str(config_path) in message
    assert _version(INVALID) in message
    assert "'model' key" in message
    assert "\n" not in message
    assert watcher.status()["rejected_version"] == _version(INVALID)
    assert "'model' key" in watcher.status()["last_error"]

    _write(config_path, VALID_B)
    assert await watcher.check_now() is True

    assert watcher.version == _version(VALID_B)
    assert watcher.status()["last_error"] is None
    assert watcher.status()["rejected_version"] is None
    assert len(_errors(caplog)) == 1


async def test_a_deleted_file_is_rejected_once_and_the_old_config_keeps_serving(
    config_path: Path,
    target: Target,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="ferryman_runtime.config_watch")
    watcher = _watcher(config_path, target, registry)
    watcher.load_initial()

    os.remove(config_path)
    assert await watcher.check_now() is False
    assert await watcher.check_now() is False

    assert watcher.version == _version(VALID_A)
    assert target.config == {"model": "alpha"}
    assert _reloads(registry, "rejected") == 1
    assert len(_errors(caplog)) == 1
    assert str(config_path) in _errors(caplog)[0].getMessage()
    assert "cannot read" in watcher.status()["last_error"]

    _write(config_path, VALID_A)
    assert await watcher.check_now() is False
    assert watcher.status()["last_error"] is None
    assert target.applied == [_version(VALID_A)]


async def test_an_apply_that_raises_is_rejected_and_the_version_is_unchanged(
    config_path: Path, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="ferryman_runtime.config_watch")
    calls: list[str] = []

    def apply(config: dict[str, Any], version: str) -> None:
        calls.append(version)
        if config["model"] != "alpha":
            raise RuntimeError("route table refused")

    watcher = ConfigWatcher(config_path, _load, apply, registry=registry)
    watcher.load_initial()
    _write(config_path, VALID_B)

    assert await watcher.check_now() is False
    assert await watcher.check_now() is False

    assert watcher.version == _version(VALID_A)
    assert calls == [_version(VALID_A), _version(VALID_B)]
    assert _reloads(registry, "rejected") == 1
    assert "route table refused" in _errors(caplog)[0].getMessage()


async def test_an_atomic_replace_is_picked_up(
    config_path: Path, target: Target, registry: CollectorRegistry
) -> None:
    watcher = _watcher(config_path, target, registry)
    watcher.load_initial()
    staged = config_path.with_name(".routing.yaml.tmp")
    staged.write_bytes(b"model: chars\n")  # same size as VALID_A: only the inode differs

    os.replace(staged, config_path)

    assert await watcher.check_now() is True
    assert watcher.version == _version(b"model: chars\n")


async def test_a_configmap_symlink_swap_is_picked_up(
    tmp_path: Path, target: Target, registry: CollectorRegistry
) -> None:
    for name, data in (("..v1", VALID_A), ("..v2", VALID_B)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "routing.yaml").write_bytes(data)
    (tmp_path / "..data").symlink_to("..v1")
    path = tmp_path / "routing.yaml"
    path.symlink_to("..data/routing.yaml")
    watcher = _watcher(path, target, registry)
    watcher.load_initial()

    (tmp_path / "..data_tmp").symlink_to("..v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")

    assert await watcher.check_now() is True
    assert watcher.version == _version(VALID_B)


async def test_a_change_that_keeps_mtime_size_and_inode_is_found_by_the_forced_reread(
    config_path: Path, target: Target, registry: CollectorRegistry
) -> None:
    watcher = _watcher(config_path, target, registry)
    watcher.load_initial()
    _rewrite_keeping_stat(config_path, b"model: omega\n")

    results = [await watcher.check_now() for _ in range(10)]

    assert results == [False] * 9 + [True]
    assert watcher.version == _version(b"model: omega\n")


async def test_a_file_written_while_being_read_is_not_applied_until_it_settles(
    config_path: Path,
    target: Target,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    watcher = _watcher(config_path, target, registry)
    watcher.load_initial()
    _write(config_path, b"model: br")
    real_read_bytes = Path.read_bytes

    def read_then_finish_writing(self: Path) -> bytes:
        data = real_read_bytes(self)
        monkeypatch.setattr(Path, "read_bytes", real_read_bytes)
        _write(config_path, VALID_B)  # the writer finishes after our read
        return data

    monkeypatch.setattr(Path, "read_bytes", read_then_finish_writing)

    assert await watcher.check_now() is False
    assert target.applied == [_version(VALID_A)]
    assert await watcher.check_now() is True
    assert target.applied == [_version(VALID_A), _version(VALID_B)]
    assert _reloads(registry, "rejected") == 0


async def test_version_info_carries_exactly_the_active_version(
    config_path: Path, target: Target, registry: CollectorRegistry
) -> None:
    watcher = _watcher(config_path, target, registry)
    watcher.load_initial()
    assert _version_labels(registry) == [_version(VALID_A)]

    _write(config_path, VALID_B)
    await watcher.check_now()
    _write(config_path, INVALID)
    await watcher.check_now()

    assert _version_labels(registry) == [_version(VALID_B)]


async def test_run_picks_up_a_change_and_stops_on_cancel(
    config_path: Path, target: Target, registry: CollectorRegistry
) -> None:
    watcher = _watcher(config_path, target, registry, interval=0.05)
    watcher.load_initial()
    target.event.clear()
    task = asyncio.create_task(watcher.run())
    try:
        _write(config_path, VALID_B)
        await asyncio.wait_for(target.event.wait(), timeout=5)
        assert watcher.version == _version(VALID_B)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    assert task.cancelled()


def test_watchers_of_two_files_share_the_families_under_their_config_label(
    tmp_path: Path, target: Target, registry: CollectorRegistry
) -> None:
    routing, policy = tmp_path / "routing.yaml", tmp_path / "policy.yaml"
    _write(routing, VALID_A)
    _write(policy, VALID_B)
    ConfigWatcher(routing, _load, target.apply, registry=registry, name="routing").load_initial()
    ConfigWatcher(policy, _load, target.apply, registry=registry, name="policy").load_initial()

    info = {
        (sample.labels["config"], sample.labels["version"])
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "ferryman_config_info"
    }

    assert info == {("routing", _version(VALID_A)), ("policy", _version(VALID_B))}
