"""The entry point every worker's `__main__` calls: settings once, logging, tracing, app,
serve."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from faststream.asgi import AsgiFastStream

from ferryman_runtime.hosting import serve
from ferryman_runtime.settings import WorkerSettings
from ferryman_runtime.telemetry.logs import configure_logging
from ferryman_runtime.telemetry.tracing import TracingConfig, install_tracing

SettingsT = TypeVar("SettingsT", bound=WorkerSettings)


def run_worker(
    settings_type: type[SettingsT],
    create_app: Callable[[SettingsT], AsgiFastStream],
    environ: Mapping[str, str] | None = None,
) -> None:
    """Read the settings and the `OTEL_*` variables from the environment (once), set up
    logging and tracing, build the app and serve it until SIGTERM, then drain, export the
    last spans and exit 0.

    Args:
        settings_type: the worker's settings class (its env prefix names the service:
            `LLM_WORKER_` → `llm_worker`).
        create_app: builds the worker's app from its settings.
        environ: where the `OTEL_*` variables are read (default: the process environment).

    Raises:
        pydantic.ValidationError: the environment holds invalid settings.
        ferryman_runtime.telemetry.tracing.TracingConfigError: an `OTEL_*` variable is invalid.
    """
    settings = settings_type()
    service = service_name(settings_type)
    configure_logging(settings.log_level, settings.log_format, service=service)
    tracing = install_tracing(
        TracingConfig.from_environ(os.environ if environ is None else environ),
        service_name=service,
        instance_id=settings.instance_id,
    )
    app = create_app(settings)
    try:  # uvloop: a cheaper event loop for thousands of concurrent streams
        import uvloop  # pyright: ignore[reportMissingImports]

        runner: Callable[..., Any] = uvloop.run  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    except ImportError:  # pragma: no cover - uvloop has no wheels for some platforms
        runner = asyncio.run
    try:
        code = runner(serve(app, host=settings.http_host, port=settings.http_port))
    finally:
        if tracing is not None:
            tracing.shutdown()
    if code:
        sys.exit(code)


def service_name(settings_type: type[WorkerSettings]) -> str:
    """The worker's name from its settings' env prefix (`LLM_WORKER_` → `llm_worker`)."""
    prefix = str(settings_type.model_config.get("env_prefix") or "")
    return prefix.strip("_").lower() or "ferryman_worker"
