"""A GCS backend of the policy file opened: its service-account reference resolved."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman_runtime.references import UnresolvedReference, resolve
from storage_worker.backends.gcs import GcsStore
from storage_worker.backends.gcs_settings import GcsSettings
from storage_worker.policy import GcsBackend


async def open_gcs(name: str, config: GcsBackend, environ: Mapping[str, str]) -> GcsStore:
    """Open the bucket of `config` (the service account resolved from `environ`).

    Raises:
        FerrymanError: `auth` when the reference cannot be resolved or is not a JSON
            service-account key (the message names the reference, never its content); the
            store's own errors when it cannot be opened.
    """
    account: dict[str, Any] | None = None
    if config.service_account_file is not None:
        try:
            text = resolve(config.service_account_file, environ).get_secret_value()
        except UnresolvedReference as exc:
            raise FerrymanError(
                ErrorCode.AUTH, f"backend {name!r}: {exc}", retryable=False
            ) from None
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or parsed.get("type") != "service_account":
            raise FerrymanError(
                ErrorCode.AUTH,
                f"backend {name!r}: {config.service_account_file!r} is not a JSON"
                " service-account key",
                retryable=False,
            )
        account = dict(parsed)
    settings = GcsSettings(
        bucket=config.bucket, endpoint_url=config.endpoint_url, service_account=account
    )
    return await GcsStore.open(name, settings)
