"""Private Kafka brokers for tests that stop and restart one (never the shared broker).

Each runs from the repository's resolved jars (`tools/kafka/local_kafka.py`) in its own
directory, on its own pair of ports (client and controller).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def local_kafka() -> ModuleType:
    """`tools/kafka/local_kafka.py`, loaded once per session (tests/conftest.py may have)."""
    loaded = sys.modules.get("local_kafka")
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(
        "local_kafka", ROOT / "tools" / "kafka" / "local_kafka.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["local_kafka"] = module
    spec.loader.exec_module(module)
    return module


def free_port_pair() -> int:
    """A port p with p and p+1 (the controller's) both free right now.

    Raises:
        RuntimeError: no such pair was found in 50 tries.
    """
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no two consecutive free ports")


@dataclass
class PrivateBroker:
    """A single-node broker only one test uses, which it may stop and start again (its
    data survives a restart)."""

    home: Path
    port: int = field(default_factory=free_port_pair)

    @property
    def bootstrap(self) -> str:
        """`127.0.0.1:<port>`."""
        return f"127.0.0.1:{self.port}"

    def up(self, timeout: float = 120.0) -> str:
        """Start the broker (if it is not running) and wait until it answers; return its
        bootstrap address.

        Raises:
            local_kafka.KafkaError: it did not start within `timeout` seconds.
        """
        kafka = local_kafka()
        return kafka.ensure_running(
            port=self.port, home=self.home, timeout=timeout, libs_home=kafka.default_home()
        )

    def down(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL); nothing if it is not running."""
        local_kafka().stop(self.home, self.port)

    async def start(self, timeout: float = 120.0) -> str:
        """`up`, off the event loop."""
        return await asyncio.to_thread(self.up, timeout)

    async def stop(self) -> None:
        """`down`, off the event loop."""
        await asyncio.to_thread(self.down)


@contextlib.contextmanager
def private_broker(directory: Path) -> Iterator[PrivateBroker]:
    """A broker (not started yet) living in `directory`/kafka; stopped on exit.

    Skips the test when the jars were never resolved (`tools/kafka/local_kafka.py up`).
    """
    libs = local_kafka().default_home() / "libs"
    if not (libs / ".pom-sha256").exists():
        pytest.skip("no resolved Kafka jars (tools/kafka/local_kafka.py up) for a private broker")
    home = directory / "kafka"
    home.mkdir()
    broker = PrivateBroker(home)
    try:
        yield broker
    finally:
        broker.down()
