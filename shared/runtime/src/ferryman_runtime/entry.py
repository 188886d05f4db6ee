"""The entry point every worker's `__main__` calls: settings once, logging, app, serve."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from faststream.asgi import AsgiFastStream

from ferryman_runtime.hosting import serve
from ferryman_runtime.settings import WorkerSettings

SettingsT = TypeVar("SettingsT", bound=WorkerSettings)


def run_worker(
    settings_type: type[SettingsT], create_app: Callable[[SettingsT], AsgiFastStream]
) -> None:
    """Read the settings from the environment (once), build the app and serve it until
    SIGTERM, then drain and exit 0.

    Raises:
        pydantic.ValidationError: the environment holds invalid settings.
    """
    settings = settings_type()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = create_app(settings)
    try:  # uvloop: a cheaper event loop for thousands of concurrent streams
        import uvloop  # pyright: ignore[reportMissingImports]

        runner: Callable[..., Any] = uvloop.run  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    except ImportError:  # pragma: no cover - uvloop has no wheels for some platforms
        runner = asyncio.run
    code = runner(serve(app, host=settings.http_host, port=settings.http_port))
    if code:
        sys.exit(code)
