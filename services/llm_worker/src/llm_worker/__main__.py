"""Entry point: `python -m llm_worker`, configured by environment variables only."""

from __future__ import annotations

from ferryman_runtime.entry import run_worker
from llm_worker.app import create_app
from llm_worker.settings import LlmWorkerSettings


def main() -> None:
    """Read settings once, build the app and serve it until SIGTERM."""
    run_worker(LlmWorkerSettings, create_app)


if __name__ == "__main__":
    main()
