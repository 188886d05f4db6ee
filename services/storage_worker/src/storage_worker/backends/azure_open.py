"""An Azure backend of the policy file opened: its credential references resolved."""

from __future__ import annotations

from collections.abc import Mapping

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman_runtime.references import UnresolvedReference, resolve
from storage_worker.backends.azure import AzureStore
from storage_worker.backends.azure_settings import AzureSettings
from storage_worker.policy import AzureBackend


async def open_azure(name: str, config: AzureBackend, environ: Mapping[str, str]) -> AzureStore:
    """Open the container of `config` (references resolved from `environ`).

    Raises:
        FerrymanError: `auth` when a reference cannot be resolved (the message names the
            reference, never a value); `invalid_request` when the SDK refuses the settings.
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

    try:
        settings = AzureSettings(
            container=config.container,
            account_url=config.account_url,
            connection_string=secret(config.connection_string),
            account_name=config.account_name,
            account_key=secret(config.account_key),
            api_version=config.api_version,
        )
    except ValueError as exc:  # an empty secret: the messages name fields, never values
        raise FerrymanError(
            ErrorCode.INVALID_REQUEST, f"backend {name!r}: {exc}", retryable=False
        ) from None
    return await AzureStore.open(name, settings)
