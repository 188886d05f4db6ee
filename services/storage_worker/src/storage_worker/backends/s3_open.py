"""An S3 backend of the policy file opened: its credential references resolved."""

from __future__ import annotations

from collections.abc import Mapping

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman_runtime.references import UnresolvedReference, resolve
from storage_worker.backends.s3 import S3Store
from storage_worker.backends.s3_settings import S3Settings
from storage_worker.policy import S3Backend


async def open_s3(name: str, config: S3Backend, environ: Mapping[str, str]) -> S3Store:
    """Open the bucket of `config` (references resolved from `environ`).

    Raises:
        FerrymanError: `auth` when a reference cannot be resolved (the message names the
            reference, never a value); the store's own errors when it cannot be opened.
    """

    def secret(reference: str | None) -> str | None:
        if reference is None:
            return None
        try:
            return resolve(reference, environ).get_secret_value()
        except UnresolvedReference as exc:
            raise FerrymanError(
                ErrorCode.AUTH, f"backend {name!r}: {exc}", retryable=False
            ) from None

    settings = S3Settings(
        bucket=config.bucket,
        region=config.region,
        endpoint_url=config.endpoint_url,
        access_key_id=secret(config.access_key_id),
        secret_access_key=secret(config.secret_access_key),
        addressing_style=config.addressing_style,
    )
    return await S3Store.open(name, settings)
