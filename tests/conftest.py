"""Session fixtures: one real Kafka broker for the whole run.

Where it comes from, in order: `KAFKA_BOOTSTRAP_SERVERS` if set; testcontainers'
Kafka when a Docker engine answers; else the local broker from Maven Central
jars (`tools/kafka/local_kafka.py`), reused if already running, started (and
stopped at the end) otherwise.

Also a guard: a run that leaves new files in the repository (outside `.kafka/` and the
tool caches) is reported, and fails under CI: tests write under `tmp_path` only. Only
under CI, because locally other work may add files to the tree while the tests run.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
LEFT_BEHIND_OK = (".kafka/", ".pytest_cache/", ".ruff_cache/", ".venv/")
"""Untracked paths a run may create: the shared broker's data and the tools' caches."""
_BEFORE = pytest.StashKey[set[str] | None]()
_STRAYS = pytest.StashKey[list[str]]()


def _untracked_paths() -> set[str] | None:
    """Untracked and ignored paths in the repository (a new folder counts once), or None
    when git cannot tell (not a checkout)."""
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=normal", "--ignored=matching"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    paths = {line[3:] for line in status.splitlines() if line[:2] in ("??", "!!")}
    return {
        p
        for p in paths
        if not p.startswith(LEFT_BEHIND_OK) and "__pycache__" not in p and not p.endswith(".pyc")
    }


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = _untracked_paths()


def pytest_sessionfinish(session: pytest.Session) -> None:
    before = session.config.stash.get(_BEFORE, None)
    after = _untracked_paths() if before is not None else None
    strays = sorted(after - before) if before is not None and after is not None else []
    session.config.stash[_STRAYS] = strays
    if strays and os.environ.get("CI"):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    strays = terminalreporter.config.stash.get(_STRAYS, [])
    if strays:
        terminalreporter.write_line(
            "new files in the repository after this run (tests must write under tmp_path):"
            f" {', '.join(strays)}",
            red=True,
        )


def _local_kafka_module() -> ModuleType:
    path = ROOT / "tools" / "kafka" / "local_kafka.py"
    spec = importlib.util.spec_from_file_location("local_kafka", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["local_kafka"] = module
    spec.loader.exec_module(module)
    return module


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real Kafka broker."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    if _docker_answers():
        from testcontainers.community.kafka import KafkaContainer  # type: ignore[import-untyped]

        with KafkaContainer("confluentinc/cp-kafka:7.6.0").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    local_kafka = _local_kafka_module()
    already_running = local_kafka.is_answering()
    bootstrap = local_kafka.ensure_running()
    try:
        yield bootstrap
    finally:
        if not already_running:
            local_kafka.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis (see `tests.redis_server`); skipped without one, failed under CI."""
    from tests.redis_server import RedisUnavailable, redis_for_tests

    try:
        with redis_for_tests(tmp_path_factory.mktemp("redis"), _docker_answers()) as url:
            yield url
    except RedisUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"no Redis for the shared response-cache tests under CI: {exc}")
        pytest.skip(f"no Redis: {exc}")


@pytest.fixture
def unique() -> str:
    """A short unique suffix for this test's topics and groups."""
    return uuid.uuid4().hex[:10]
