"""V4 signed URLs for GCS from google-cloud-storage's signer (CPU only: no request is sent),
with a service account's key. Without one, signing is refused with a clear error."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2 import service_account

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.gcs_settings import GOOGLE_API_ROOT

MAX_SIGNED_SECONDS = 7 * 24 * 3600
"""V4 signatures' longest expiry."""


class UrlSigner:
    """Signs URLs for one bucket.

    Args:
        bucket: the bucket.
        service_account: the parsed key file, or None (then `sign` refuses).
        endpoint_url: where the URLs point (an emulator), None for Google.

    Raises:
        FerrymanError: `auth` when `service_account` is not a usable service-account key
            (the message never quotes the key).
    """

    def __init__(
        self, bucket: str, service_account: dict[str, Any] | None, endpoint_url: str | None
    ) -> None:
        self._endpoint = (endpoint_url or GOOGLE_API_ROOT).rstrip("/")
        self._credentials: service_account.Credentials | None = None
        self._bucket: storage.Bucket | None = None
        if service_account is None:
            return
        try:
            self._credentials = service_account_credentials(service_account)
        except (ValueError, KeyError, TypeError):
            raise FerrymanError(
                ErrorCode.AUTH,
                "the GCS service account is not a usable service-account key file",
                retryable=False,
            ) from None
        # an anonymous client: the signer wants one (for its universe domain); it sends nothing
        client = storage.Client(
            project=str(service_account.get("project_id") or "ferryman"),
            credentials=AnonymousCredentials(),
        )
        self._bucket = client.bucket(bucket)

    def sign(
        self,
        key: str,
        method: Literal["GET", "PUT"],
        expires_in: int,
        content_type: str | None,
    ) -> tuple[str, dict[str, str]]:
        """A V4 URL to `method` the object `key`, and the headers its request must send.

        Raises:
            FerrymanError: `invalid_request` without a service account or for an expiry
                outside 1 s to 7 days.
        """
        if self._bucket is None or self._credentials is None:
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                "this GCS backend cannot sign URLs: configure service_account_file (a"
                " service-account key) for it",
                retryable=False,
            )
        if not 1 <= expires_in <= MAX_SIGNED_SECONDS:
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"GCS URLs expire within 1 to {MAX_SIGNED_SECONDS} seconds, not {expires_in}",
                retryable=False,
            )
        headers = {"Content-Type": content_type} if method == "PUT" and content_type else {}
        url = self._bucket.blob(key).generate_signed_url(
            version="v4",
            expiration=timedelta(seconds=expires_in),
            method=method,
            content_type=headers.get("Content-Type"),
            credentials=self._credentials,
            api_access_endpoint=self._endpoint,
        )
        return url, headers


def service_account_credentials(info: dict[str, Any]) -> service_account.Credentials:
    """Credentials from a parsed service-account key.

    Raises:
        ValueError: not a service-account key.
    """
    if info.get("type") != "service_account":
        raise ValueError("not a service-account key")
    return service_account.Credentials.from_service_account_info(info)
