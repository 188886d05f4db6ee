"""A 1 GiB object copied between two local backends by a storage_worker process through the
real Kafka: the copy's bytes match (SHA-256, read back from the target's root), progress
comes in order up to the whole size, and the worker's resident memory grows by less than
64 MiB over the copy (its peak, VmHWM, reset after a warm-up copy, minus its RSS then)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ferryman.contracts.storage import CopyCompleted, StorageProgress
from ferryman.storage_client import StorageClient
from tests.integration.conftest import WorkerProcess
from tests.storage.large_object import MIB, sha256_of, sha256_of_file, write_local_object

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SIZE = 1024 * MIB
WARM_UP_SIZE = 16 * MIB
RSS_GROWTH_LIMIT_MIB = 64
SEED = 20261201
TENANT = "acme"


class StorageWorkerProcess(WorkerProcess):
    """`python -m storage_worker` in a subprocess (health, readiness and kill as for the LLM
    worker's)."""

    def start(self) -> None:
        """Start the process (HTTP port fixed per worker)."""
        env = {**os.environ, **self.env, "STORAGE_WORKER_HTTP_PORT": str(self.port)}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "storage_worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def memory_kib(self, field: str) -> int:
        """A `Vm…` line of /proc/<pid>/status (`VmRSS`, `VmHWM`), in KiB."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.process.pid}/status")

    def reset_peak_rss(self) -> bool:
        """Reset VmHWM to the current RSS (Linux `clear_refs` 5); False if not allowed."""
        assert self.process is not None
        try:
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True


@pytest.fixture
def storage_worker(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> Iterator[Callable[[Path], StorageWorkerProcess]]:
    """Build a storage_worker process on this test's topics with a given policy file."""
    workers: list[StorageWorkerProcess] = []

    def make(policy_file: Path) -> StorageWorkerProcess:
        prefix = f"t-{unique}"
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "STORAGE_WORKER_REQUEST_TOPIC": f"{prefix}.storage.requests",
            "STORAGE_WORKER_DEFAULT_REPLY_TOPIC": f"{prefix}.storage.results",
            "STORAGE_WORKER_EVENTS_TOPIC": f"{prefix}.storage.events",
            "STORAGE_WORKER_HEALTH_TOPIC": f"{prefix}.health",
            "STORAGE_WORKER_GROUP_ID": f"g-{unique}",
            "STORAGE_WORKER_INSTANCE_ID": unique,
            "STORAGE_WORKER_TOPIC_PARTITIONS": "1",
            "STORAGE_WORKER_POLICY_FILE": str(policy_file),
            "STORAGE_WORKER_LOCAL_ROOT": str(tmp_path / "unused-default-root"),
            "STORAGE_WORKER_GRACE_PERIOD": "5",
            "STORAGE_WORKER_LOG_LEVEL": "INFO",
        }
        worker = StorageWorkerProcess(env=env, log_path=tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.kill()


@pytest.fixture
def roots(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """The two backends' roots; removed at teardown (2 GiB that pytest would keep)."""
    source_root, target_root = tmp_path / "source-root", tmp_path / "target-root"
    yield source_root, target_root
    for root in (source_root, target_root):
        shutil.rmtree(root, ignore_errors=True)


async def test_a_1_gib_copy_streams_with_bounded_worker_memory(
    storage_worker: Callable[[Path], StorageWorkerProcess],
    roots: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    source_root, target_root = roots
    policy = {
        "backends": {
            "source": {"type": "local", "root": str(source_root)},
            "target": {"type": "local", "root": str(target_root)},
        },
        "tenants": {TENANT: {"spaces": {"source": "acme/", "target": "acme/"}}},
    }
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(policy))
    await write_local_object(source_root, "acme/warm-up.bin", WARM_UP_SIZE, SEED + 1)
    stored = await write_local_object(source_root, "acme/big/object.bin", SIZE, SEED)
    expected = sha256_of(SIZE, SEED)
    worker = storage_worker(policy_file)
    worker.start()
    await worker.wait_ready()

    async with StorageClient(
        worker.env["KAFKA_BOOTSTRAP_SERVERS"],
        request_topic=worker.env["STORAGE_WORKER_REQUEST_TOPIC"],
        reply_topic=worker.env["STORAGE_WORKER_DEFAULT_REPLY_TOPIC"],
    ) as storage:
        await storage.copy(
            "warm-up.bin", "warm-up.bin", source_backend="source", backend="target", tenant=TENANT
        )
        baseline_kib = worker.memory_kib("VmRSS")
        peak_was_reset = worker.reset_peak_rss()
        events = [
            event
            async for event in storage.copy_stream(
                "big/object.bin",
                "big/copy.bin",
                source_backend="source",
                backend="target",
                tenant=TENANT,
            )
        ]
        peak_kib = worker.memory_kib("VmHWM")

    growth_mib = (peak_kib - baseline_kib) / 1024
    print(
        f"\n1 GiB copy: worker RSS {baseline_kib / 1024:.1f} MiB after warm-up, peak"
        f" {peak_kib / 1024:.1f} MiB, growth {growth_mib:.1f} MiB"
        f" (peak {'reset after warm-up' if peak_was_reset else 'since start'})"
    )
    progress = [e for e in events if isinstance(e, StorageProgress)]
    completed = events[-1]
    assert isinstance(completed, CopyCompleted)
    assert stored.sha256 == expected
    assert completed.object.size == SIZE
    assert completed.object.checksum is not None
    assert completed.object.checksum.value == expected
    assert sha256_of_file(target_root / "acme" / "big" / "copy.bin") == expected
    assert progress, "a 1 GiB copy reports progress"
    assert [p.sequence for p in progress] == list(range(len(progress)))
    done = [p.bytes_done for p in progress]
    assert done == sorted(done)
    assert done[-1] == SIZE
    assert {p.bytes_total for p in progress} == {SIZE}
    assert {p.stage for p in progress} == {"copy"}
    assert growth_mib < RSS_GROWTH_LIMIT_MIB
