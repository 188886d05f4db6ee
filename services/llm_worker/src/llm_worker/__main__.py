"""Entry point: `python -m llm_worker`, configured by environment variables only."""

from __future__ import annotations

import asyncio
import logging

from llm_worker.app import create_app
from llm_worker.settings import LlmWorkerSettings
from shared.runtime.hosting import serve


def main() -> None:
    """Read settings once, build the app and serve it until SIGTERM."""
    settings = LlmWorkerSettings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = create_app(settings)
    asyncio.run(serve(app, host=settings.http_host, port=settings.http_port))


if __name__ == "__main__":
    main()
