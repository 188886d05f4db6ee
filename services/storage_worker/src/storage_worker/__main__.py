"""Entry point: `python -m storage_worker` (settings from `STORAGE_WORKER_*` variables)."""

from __future__ import annotations

from ferryman_runtime.entry import run_worker
from storage_worker.app import create_app
from storage_worker.settings import StorageWorkerSettings


def main() -> None:
    """Run the storage_worker until SIGTERM, then drain and exit."""
    run_worker(StorageWorkerSettings, create_app)


if __name__ == "__main__":
    main()
