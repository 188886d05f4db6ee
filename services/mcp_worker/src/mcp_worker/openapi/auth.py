"""Credentials for an API's calls, placed where its security schemes say: API keys (header,
query, cookie), HTTP bearer and basic, and OAuth2 client credentials (a token fetched,
cached until shortly before it expires, and fetched again once after a 401).

Secrets live only in the request being sent: they never reach events, logs or errors (a
token endpoint's failure is reported by status, never by body).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urljoin

import httpx2

from ferryman.contracts import ErrorCode, FerrymanError

TOKEN_MARGIN = 30.0
"""Seconds before its expiry a cached token is fetched again."""


@dataclass(frozen=True)
class SchemeSecret:
    """The secret of one security scheme (resolved from `env:`/`file:` references)."""

    value: str | None = None
    """An API key or a bearer token."""
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    client_secret: str | None = None


@dataclass
class _Token:
    value: str
    expires_at: float


class ApiAuth:
    """Applies an API's credentials to its requests.

    Args:
        api: the API's name (in errors).
        schemes: the document's `components.securitySchemes`.
        secrets: secrets by scheme name.
        base_url: where relative token URLs resolve.
        client: the HTTP client token requests go through.
        clock: monotonic seconds (token expiry).
    """

    def __init__(
        self,
        api: str,
        schemes: Mapping[str, Any],
        secrets: Mapping[str, SchemeSecret],
        *,
        base_url: str,
        client: httpx2.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._schemes = schemes
        self._secrets = secrets
        self._base_url = base_url
        self._client = client
        self._clock = clock
        self._tokens: dict[str, _Token] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def requirement(
        self, security: Sequence[Mapping[str, tuple[str, ...]]]
    ) -> Mapping[str, tuple[str, ...]]:
        """The first requirement whose every scheme has a secret ({} when none is needed).

        Raises:
            FerrymanError: `auth` when no requirement can be met with the configured secrets.
        """
        if not security:
            return {}
        for requirement in security:
            if all(name in self._secrets and name in self._schemes for name in requirement):
                return requirement
        wanted = " or ".join("+".join(r) or "(none)" for r in security)
        raise FerrymanError(
            ErrorCode.AUTH,
            f"{self._api}: no credentials configured for {wanted}",
            retryable=False,
            upstream=self._api,
        )

    async def apply(
        self, request: httpx2.Request, requirement: Mapping[str, tuple[str, ...]]
    ) -> httpx2.Request:
        """`request` with the credentials of `requirement` added.

        Raises:
            FerrymanError: a scheme is not supported, or an OAuth2 token could not be had.
        """
        params: list[tuple[str, str]] = []
        for name, scopes in requirement.items():
            scheme = cast(dict[str, Any], self._schemes[name])
            secret = self._secrets[name]
            kind = scheme.get("type")
            if kind == "apiKey":
                where, key = scheme.get("in"), str(scheme.get("name"))
                if where == "header":
                    request.headers[key] = secret.value or ""
                elif where == "query":
                    params.append((key, secret.value or ""))
                elif where == "cookie":
                    cookie = f"{key}={secret.value or ''}"
                    existing = request.headers.get("Cookie")
                    request.headers["Cookie"] = f"{existing}; {cookie}" if existing else cookie
            elif kind == "http" and str(scheme.get("scheme", "")).lower() == "bearer":
                request.headers["Authorization"] = f"Bearer {secret.value or ''}"
            elif kind == "http" and str(scheme.get("scheme", "")).lower() == "basic":
                pair = f"{secret.username or ''}:{secret.password or ''}".encode()
                request.headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
            elif kind == "oauth2" and _client_credentials(scheme) is not None:
                token = await self._token(name, scheme, secret, scopes)
                request.headers["Authorization"] = f"Bearer {token}"
            else:
                raise FerrymanError(
                    ErrorCode.INVALID_REQUEST,
                    f"{self._api}: security scheme {name!r} ({kind}) is not supported",
                    retryable=False,
                )
        if params:
            request.url = request.url.copy_merge_params(tuple(params))
        return request

    def forget_tokens(self, requirement: Mapping[str, tuple[str, ...]]) -> bool:
        """Drop the cached OAuth2 tokens of `requirement` (after a 401); whether there were any."""
        dropped = [self._tokens.pop(name, None) for name in requirement]
        return any(token is not None for token in dropped)

    async def _token(
        self, name: str, scheme: dict[str, Any], secret: SchemeSecret, scopes: tuple[str, ...]
    ) -> str:
        cached = self._tokens.get(name)
        if cached is not None and cached.expires_at > self._clock():
            return cached.value
        async with self._locks.setdefault(name, asyncio.Lock()):
            cached = self._tokens.get(name)  # another call may have fetched it meanwhile
            if cached is not None and cached.expires_at > self._clock():
                return cached.value
            flow = _client_credentials(scheme) or {}
            url = urljoin(self._base_url.rstrip("/") + "/", str(flow.get("tokenUrl", "")))
            form = {"grant_type": "client_credentials"}
            if scopes:
                form["scope"] = " ".join(scopes)
            auth = httpx2.BasicAuth(secret.client_id or "", secret.client_secret or "")
            try:
                response = await self._client.post(url, data=form, auth=auth)
            except httpx2.HTTPError as exc:
                raise FerrymanError(
                    ErrorCode.UNAVAILABLE,
                    f"{self._api}: the OAuth2 token endpoint could not be reached"
                    f" ({type(exc).__name__})",
                    retryable=True,
                    upstream=self._api,
                ) from None
            if response.status_code != 200:
                code = (
                    ErrorCode.AUTH
                    if response.status_code in (400, 401, 403)
                    else ErrorCode.UNAVAILABLE
                )
                raise FerrymanError(
                    code,
                    f"{self._api}: the OAuth2 token endpoint answered HTTP {response.status_code}",
                    retryable=code is ErrorCode.UNAVAILABLE,
                    upstream=self._api,
                )
            try:
                body = cast(dict[str, Any], response.json())
                lifetime = float(body.get("expires_in") or 3600)
                value = str(body["access_token"])
            except (ValueError, KeyError, TypeError, AttributeError):
                raise FerrymanError(
                    ErrorCode.UNAVAILABLE,
                    f"{self._api}: the OAuth2 token endpoint answered without an access token",
                    retryable=True,
                    upstream=self._api,
                ) from None
            margin = min(TOKEN_MARGIN, lifetime / 2)
            token = _Token(value, self._clock() + lifetime - margin)
            self._tokens[name] = token
            return token.value


def _client_credentials(scheme: dict[str, Any]) -> dict[str, Any] | None:
    flows = scheme.get("flows")
    if not isinstance(flows, dict):
        return None
    flow = cast(dict[str, Any], flows).get("clientCredentials")
    return cast(dict[str, Any], flow) if isinstance(flow, dict) else None


def unsupported_schemes(schemes: Mapping[str, Any]) -> list[str]:
    """Warnings for the document's security schemes no credential can satisfy here (the
    operations needing only them cannot be called)."""
    warnings: list[str] = []
    for name, raw in schemes.items():
        scheme = cast(dict[str, Any], raw) if isinstance(raw, dict) else {}
        kind = scheme.get("type")
        if kind == "apiKey" and scheme.get("in") in ("header", "query", "cookie"):
            continue
        if kind == "http" and str(scheme.get("scheme", "")).lower() in ("bearer", "basic"):
            continue
        if kind == "oauth2" and _client_credentials(scheme) is not None:
            continue
        detail = kind
        if kind == "http":
            detail = f"http {scheme.get('scheme')}"
        elif kind == "oauth2":
            flows = scheme.get("flows")
            named = sorted(cast(dict[str, Any], flows)) if isinstance(flows, dict) else []
            detail = f"oauth2 {'/'.join(named) or 'without flows'}"
        warnings.append(
            f"security scheme {name!r} ({detail}) is not supported: only API keys, HTTP bearer"
            " and basic, and OAuth2 client credentials are"
        )
    return warnings
