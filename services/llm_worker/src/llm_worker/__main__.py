"""Entry point: `python -m llm_worker`, configured by environment variables only."""

from __future__ import annotations

import asyncio
import logging

from ferryman_runtime.hosting import serve
from llm_worker.app import create_app
from llm_worker.settings import LlmWorkerSettings

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop has no wheels for some platforms
    uvloop = None


def main() -> None:
    """Read settings once, build the app and serve it until SIGTERM."""
    settings = LlmWorkerSettings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = create_app(settings)
    # uvloop: a cheaper event loop for hundreds of concurrent streams (falls back if absent).
    runner = uvloop.run if uvloop is not None else asyncio.run
    runner(serve(app, host=settings.http_host, port=settings.http_port))


if __name__ == "__main__":
    main()
