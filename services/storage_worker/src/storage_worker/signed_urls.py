"""Signed URLs of the local backend, served by the worker itself (`local_urls`).

A URL grants one method on one object of one backend until it expires: HMAC-SHA256 over
those, and for a PUT the content type it must send and the tenant's object size limit. The
request that asked for the URL (a presign request) names its tenant through
`signing_for`, so an upload lands in that tenant's space, under its limits, with its
object event. Every replica of the worker signing with the same key (a credential
reference) serves every replica's URLs; without one, a random key of this process signs,
and its URLs work on this replica only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlencode

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman_runtime.references import UnresolvedReference, is_reference, resolve
from storage_worker.backends.port import Presigned

logger = logging.getLogger(__name__)

OBJECTS_PATH = "/objects"
"""Where the worker serves signed URLs (one path: the object is named in the query)."""
MAX_EXPIRY = 7 * 24 * 3600
MIN_KEY_BYTES = 32
_VERSION = "ferryman-local-url-v1"
_FIELDS = ("method", "backend", "key", "expires", "content_type", "max_bytes", "tenant", "request")
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")

Method = Literal["GET", "PUT"]


class UrlRefused(Exception):
    """A URL that grants nothing: expired, tampered, or used with another method or content
    type. The message is the short reason told to the client (never the key or a MAC)."""


@dataclass(frozen=True)
class UrlGrant:
    """What one signed URL allows."""

    method: Method
    backend: str
    key: str
    """The backend's full key (the tenant's prefix included), normalised."""
    expires: int
    """Unix time (seconds) after which the URL is refused."""
    content_type: str | None = None
    """PUT: the Content-Type the upload must send (None: any)."""
    max_bytes: int | None = None
    """PUT: the tenant's object size limit when the URL was made (None: none)."""
    tenant: str | None = None
    """The tenant whose presign request made the URL (None: signed outside a request)."""
    request: str | None = None
    """The id of that request (the upload's object event names it)."""

    def message(self) -> bytes:
        """The bytes the MAC covers: every field, unambiguously (a JSON array)."""
        values = [_VERSION, *(getattr(self, name) for name in _FIELDS)]
        return json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SigningScope:
    """The tenant a URL is signed for, and the limits its upload must keep."""

    tenant: str
    max_object_bytes: int | None
    request: str


_SCOPE: ContextVar[SigningScope | None] = ContextVar("storage_signing_scope", default=None)


@contextmanager
def signing_for(tenant: str, max_object_bytes: int | None, request: str) -> Iterator[None]:
    """URLs signed inside this block are the tenant's (its space, its limits, its events)."""
    token = _SCOPE.set(SigningScope(tenant, max_object_bytes, request))
    try:
        yield
    finally:
        _SCOPE.reset(token)


class UrlSigner:
    """Signs and verifies URLs of the worker's `/objects` route.

    Args:
        key: the HMAC key (every replica that serves the URLs holds the same one).
        base_url: the worker's address as clients reach it (`https://storage.example`).
        clock: the current Unix time.
    """

    def __init__(
        self, key: bytes, base_url: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = key
        self._endpoint = base_url.rstrip("/") + OBJECTS_PATH
        self._clock = clock

    def presign(
        self,
        backend: str,
        key: str,
        method: Method,
        expires_in: int,
        *,
        content_type: str | None = None,
    ) -> Presigned:
        """A URL to GET or PUT `key` of `backend` for `expires_in` seconds, for the tenant
        of the enclosing `signing_for` block (if any).

        Raises:
            FerrymanError: `invalid_request` for an expiry outside 1 s to 7 days.
        """
        if not 1 <= expires_in <= MAX_EXPIRY:
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"local URLs expire within 1 to {MAX_EXPIRY} seconds, not {expires_in}",
                retryable=False,
                upstream=backend,
            )
        scope = _SCOPE.get()
        upload = method == "PUT"
        content_type = (content_type or None) if upload else None
        grant = UrlGrant(
            method=method,
            backend=backend,
            key=key,
            expires=int(self._clock()) + expires_in,
            content_type=content_type,
            max_bytes=scope.max_object_bytes if upload and scope else None,
            tenant=scope.tenant if scope else None,
            request=scope.request if scope else None,
        )
        headers = {"Content-Type": content_type} if content_type else {}
        return Presigned(
            url=self.url(grant),
            method=method,
            expires_at=datetime.fromtimestamp(grant.expires, UTC),
            headers=headers,
        )

    def url(self, grant: UrlGrant) -> str:
        """The signed URL of `grant`."""
        query = {
            name: str(value) for name in _FIELDS if (value := getattr(grant, name)) is not None
        }
        query["signature"] = self._mac(grant)
        return f"{self._endpoint}?{urlencode(query)}"

    def verify(self, query: Mapping[str, str], method: str, content_type: str | None) -> UrlGrant:
        """The grant of a request's query, if it allows this request now.

        Args:
            query: the URL's query parameters (decoded).
            method: the request's method.
            content_type: the request's Content-Type (PUT).

        Raises:
            UrlRefused: not a signed URL, another method, a bad signature, expired, or
                another content type than the one signed.
        """
        grant = _grant_of(query)
        if method != grant.method:
            raise UrlRefused(f"this URL is for {grant.method}, not {method[:10]}")
        signature = query.get("signature", "").encode()
        if not hmac.compare_digest(signature, self._mac(grant).encode()):
            raise UrlRefused("the URL's signature does not match")
        if self._clock() >= grant.expires:
            raise UrlRefused("the URL expired")
        if grant.content_type is not None and (content_type or "").strip().lower() != (
            grant.content_type.strip().lower()
        ):
            raise UrlRefused(f"this URL takes Content-Type {grant.content_type[:100]}")
        return grant

    def _mac(self, grant: UrlGrant) -> str:
        digest = hmac.new(self._key, grant.message(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _grant_of(query: Mapping[str, str]) -> UrlGrant:
    method = query.get("method")
    backend, key, expires = query.get("backend"), query.get("key"), query.get("expires")
    if method not in ("GET", "PUT") or not backend or not key or not expires:
        raise UrlRefused("not a signed object URL")
    try:
        max_bytes = query.get("max_bytes")
        return UrlGrant(
            method=method,
            backend=backend,
            key=key,
            expires=_number(expires),
            content_type=query.get("content_type"),
            max_bytes=None if max_bytes is None else _number(max_bytes),
            tenant=query.get("tenant"),
            request=query.get("request"),
        )
    except ValueError:
        raise UrlRefused("not a signed object URL") from None


def _number(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise ValueError(text)
    return int(text)


def signing_key(reference: str | None, environ: Mapping[str, str]) -> bytes:
    """The key a credential reference (`env:VAR`, `file:/path`) names; None: a random key
    of this process, with a warning (its URLs work on this replica only). The worker asks
    once, at its start.

    Raises:
        ValueError: not a reference, a reference that cannot be resolved, or a key shorter
            than 32 bytes (the message names the reference, never a value).
    """
    if reference is None:
        logger.warning(
            "STORAGE_WORKER_URL_SIGNING_KEY is not set: local URLs are signed with a random"
            " key of this process and work on this replica only, until it restarts"
        )
        return secrets.token_bytes(MIN_KEY_BYTES)
    if not is_reference(reference):
        raise ValueError(
            "the URL signing key must be a credential reference (env:VAR or file:/path),"
            " not the key itself"
        )
    try:
        key = resolve(reference, environ).get_secret_value().encode()
    except UnresolvedReference as exc:
        raise ValueError(f"URL signing key: {exc}") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"URL signing key {reference!r}: at least {MIN_KEY_BYTES} bytes are needed"
        )
    return key


def default_base_url(http_host: str, http_port: int) -> str:
    """The worker's own HTTP address (its host name when it listens on every address)."""
    host = socket.gethostname() if http_host in _WILDCARD_HOSTS else http_host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{http_port}"
