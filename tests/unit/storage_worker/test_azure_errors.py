"""The Azure Blob backend's failures in the shared taxonomy (answers faked at the wire by a
local HTTP server, Azurite refusing a wrong key, an endpoint nobody listens on), and the
policy's Azure backends opened with their credential references."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.azure import AzureStore
from storage_worker.backends.azure_settings import AzureSettings
from storage_worker.policy import PolicyError, parse_policy
from storage_worker.stores import Stores
from tests.storage import azure_store as azure_store_module
from tests.storage.azure_store import (
    AZURITE_API_VERSION,
    AZURITE_KEY,
    azure_container,
    azurite_endpoint,
    azurite_settings,
    connection_string,
)
from tests.storage.stores import drain

WRONG_KEY = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="


@asynccontextmanager
async def answering(status: int, code: str | None, **headers: str) -> AsyncIterator[str]:
    """A local server answering every request with `status` and Azure's error `code`, its
    body echoing the account key (as a careless proxy might); its account URL."""
    body = (
        '<?xml version="1.0" encoding="utf-8"?><Error>'
        f"<Code>{code}</Code><Message>Refused for key {AZURITE_KEY}\nRequestId:1</Message>"
        "</Error>"
    )

    async def answer(request: web.Request) -> web.Response:
        del request
        extra = {"x-ms-error-code": code} if code else {}
        return web.Response(
            status=status,
            body=body.encode(),
            headers={"Content-Type": "application/xml", **extra, **headers},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/devstoreaccount1"
    finally:
        await runner.cleanup()


def settings_for(account_url: str) -> AzureSettings:
    return AzureSettings(
        container="wire",
        account_url=account_url,
        account_key=AZURITE_KEY,
        api_version=AZURITE_API_VERSION,
        connect_timeout=1.0,
        read_timeout=5.0,
        max_attempts=1,
    )


@pytest.mark.parametrize(
    ("status", "code", "expected", "retryable"),
    [
        (503, "ServerBusy", ErrorCode.RATE_LIMITED, True),
        (500, "InternalError", ErrorCode.UNAVAILABLE, True),
        (500, "OperationTimedOut", ErrorCode.TIMEOUT, True),
        (503, None, ErrorCode.UNAVAILABLE, True),
        (429, None, ErrorCode.RATE_LIMITED, True),
        (413, "RequestBodyTooLarge", ErrorCode.TOO_LARGE, False),
        (403, "AuthorizationPermissionMismatch", ErrorCode.PERMISSION_DENIED, False),
        (403, "AuthenticationFailed", ErrorCode.AUTH, False),
        (404, "BlobNotFound", ErrorCode.NOT_FOUND, False),
        (409, "LeaseIdMissing", ErrorCode.CONFLICT, False),
        (409, "BlobAlreadyExists", ErrorCode.CONFLICT, False),
        (412, "ConditionNotMet", ErrorCode.PRECONDITION_FAILED, False),
        (400, "InvalidBlockList", ErrorCode.CONFLICT, True),
        (400, "InvalidMetadata", ErrorCode.INVALID_REQUEST, False),
    ],
)
async def test_azure_answers_map_to_the_taxonomy(
    status: int, code: str | None, expected: ErrorCode, retryable: bool
) -> None:
    async with answering(status, code, **{"Retry-After": "3"}) as account_url:
        store = await AzureStore.open("azure", settings_for(account_url))
        try:
            with pytest.raises(FerrymanError) as on_get:
                await store.get("a/key")
            with pytest.raises(FerrymanError) as on_head:
                await store.head("a/key")  # a HEAD answer has no body: the code is a header
        finally:
            await store.close()

    for error in (on_get.value, on_head.value):
        assert (error.code, error.retryable, error.status) == (expected, retryable, status)
        assert error.upstream == "azure"
        assert error.retry_after == 3.0
        assert "a/key" in error.message
        assert AZURITE_KEY not in error.message
        assert AZURITE_KEY not in repr(error)


async def test_a_key_in_a_connection_string_is_never_shown() -> None:
    async with answering(403, "AuthenticationFailed") as account_url:
        settings = AzureSettings(
            container="wire",
            connection_string=connection_string(account_url),
            api_version=AZURITE_API_VERSION,
            max_attempts=1,
        )
        store = await AzureStore.open("azure", settings)
        try:
            with pytest.raises(FerrymanError) as refused:
                await store.get("k")
        finally:
            await store.close()
    assert refused.value.code is ErrorCode.AUTH
    assert "Refused for key [REDACTED]" in refused.value.message
    assert AZURITE_KEY not in refused.value.message


async def test_a_put_answered_busy_is_rate_limited_and_retryable(tmp_path: Path) -> None:
    async with answering(503, "ServerBusy") as account_url:
        store = await AzureStore.open("azure", settings_for(account_url))
        try:
            with pytest.raises(FerrymanError) as busy:
                await store.put(
                    "k",
                    _once(b"x"),
                    content_type=None,
                    metadata={},
                    tags={},
                    sha256="2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
                )
        finally:
            await store.close()
    assert (busy.value.code, busy.value.retryable) == (ErrorCode.RATE_LIMITED, True)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_an_unreachable_endpoint_is_unavailable_and_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    store = await AzureStore.open(
        "azure", settings_for(f"http://127.0.0.1:{port}/devstoreaccount1")
    )
    try:
        async with asyncio.timeout(10):
            with pytest.raises(FerrymanError) as unreachable:
                await store.head("k")
    finally:
        await store.close()
    assert unreachable.value.code is ErrorCode.UNAVAILABLE
    assert unreachable.value.retryable is True


async def test_a_wrong_key_is_refused_without_any_key_shown() -> None:
    async with azure_container() as container:
        settings = azurite_settings(container, connection_string=connection_string(key=WRONG_KEY))
        store = await AzureStore.open("azure", settings)
        try:
            with pytest.raises(FerrymanError) as on_get:
                await store.get("k")
            with pytest.raises(FerrymanError) as on_head:
                await store.head("k")
        finally:
            await store.close()
    for refused in (on_get.value, on_head.value):
        # Azurite answers AuthorizationFailure (Azure itself: AuthenticationFailed, `auth`)
        assert refused.code is ErrorCode.PERMISSION_DENIED, refused
        assert refused.retryable is False
        assert WRONG_KEY not in str(refused)
        assert AZURITE_KEY not in str(refused)
    assert WRONG_KEY not in repr(settings)


def _policy(backend: str) -> bytes:
    tenants = "tenants:\n  '*': {spaces: {azure: '{tenant}/'}}\n"
    return f"backends:\n  azure: {backend}\n{tenants}".encode()


async def test_a_policy_azure_backend_opens_with_its_references(tmp_path: Path) -> None:
    async with azure_container() as container:
        policy = parse_policy(
            _policy(
                f"{{type: azure, container: {container}, account_url: '{azurite_endpoint()}',"
                f" account_key: 'env:AZ_KEY', api_version: '{AZURITE_API_VERSION}'}}"
            )
        )
        stores = Stores(environ={"AZ_KEY": AZURITE_KEY})
        stores.configure(policy)
        try:
            store = await stores.get("azure")
            stored = await store.put(
                "acme/doc.txt",
                _once(b"hello"),
                content_type="text/plain",
                metadata={},
                tags={},
                sha256="2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            )
            _, body = await store.get("acme/doc.txt")
            content = await drain(body)
        finally:
            await stores.close()
    assert stored.size == 5
    assert content == b"hello"


async def test_an_unset_reference_fails_naming_it_and_not_its_value() -> None:
    policy = parse_policy(
        _policy("{type: azure, container: docs, connection_string: 'env:AZ_CONNECTION'}")
    )
    stores = Stores(environ={})
    stores.configure(policy)
    try:
        with pytest.raises(FerrymanError) as unresolved:
            await stores.get("azure")
    finally:
        await stores.close()
    assert unresolved.value.code is ErrorCode.AUTH
    assert "env:AZ_CONNECTION" in unresolved.value.message


@pytest.mark.parametrize(
    "backend",
    [
        "{type: azure, container: docs}",
        "{type: azure, container: docs, account_url: 'https://a.blob.core.windows.net'}",
        "{type: azure, container: docs, connection_string: 'env:C', account_url: 'https://x'}",
        "{type: azure, container: docs, connection_string: 'DefaultEndpointsProtocol=https'}",
        "{type: azure, container: Docs, connection_string: 'env:C'}",
        "{type: azure, container: a--b, connection_string: 'env:C'}",
    ],
    ids=["no-credential", "url-without-key", "both", "literal-secret", "upper-case", "dashes"],
)
def test_invalid_azure_backends_are_refused(backend: str) -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy(_policy(backend))
    assert "backends.azure" in str(refused.value)


def test_a_missing_azurite_fails_saying_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(azure_store_module, "_endpoint", None)
    monkeypatch.setattr(azure_store_module, "AZURITE_BIN", tmp_path / "azurite-blob")

    with pytest.raises(azure_store_module.AzuriteMissing) as missing:
        azure_store_module.azurite_endpoint()

    assert "tools/setup_system.sh" in str(missing.value)
