"""Presigned URLs of the Azure Blob backend: service SAS tokens signed with the account key."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from azure.storage.blob import BlobSasPermissions, generate_blob_sas
from azure.storage.blob.aio import BlobClient

from storage_worker.backends.port import Presigned


def signed(
    blob: BlobClient,
    account_key: str,
    method: Literal["GET", "PUT"],
    expires_at: datetime,
    content_type: str | None,
) -> Presigned:
    """A URL that reads (GET) or creates or replaces (PUT) `blob` until `expires_at`, and
    the headers its request must send (Put Blob needs `x-ms-blob-type`)."""
    if method == "GET":
        permission = BlobSasPermissions(read=True)
        headers: dict[str, str] = {}
    else:
        permission = BlobSasPermissions(create=True, write=True)
        headers = {"x-ms-blob-type": "BlockBlob"}
        if content_type:
            headers["Content-Type"] = content_type
    signature = generate_blob_sas(
        blob.account_name or "",
        blob.container_name,
        blob.blob_name,
        account_key=account_key,
        permission=permission,
        expiry=expires_at,
        protocol="https" if blob.scheme == "https" else None,  # an emulator speaks http
    )
    return Presigned(
        url=f"{blob.url}?{signature}", method=method, expires_at=expires_at, headers=headers
    )
