"""Session fixtures: one real Kafka broker for the whole run.

Where it comes from, in order: `KAFKA_BOOTSTRAP_SERVERS` if set; testcontainers'
Kafka when a Docker engine answers; else the local broker from Maven Central
jars (`tools/kafka/local_kafka.py`), reused if already running, started (and
stopped at the end) otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.fixture
def unique() -> str:
    """A short unique suffix for this test's topics and groups."""
    return uuid.uuid4().hex[:10]
