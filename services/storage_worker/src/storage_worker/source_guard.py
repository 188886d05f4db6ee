"""What a put from a source URL may reach: the schemes and hosts of the tenant's policy,
and never an internal address (no SSRF).

A URL passes when its scheme and host are in the tenant's `sources` rule; every address its
host resolves to must then be public (loopback and private ones only with `allow_private`;
link-local, as the cloud metadata service at 169.254.169.254, multicast, reserved and
unspecified ones never; IPv4 addresses inside IPv6 forms, mapped, 6to4, Teredo and NAT64,
are judged as the IPv4 address they carry). The connection goes to the addresses that were
checked (`GuardedResolver` is the HTTP client's resolver), so a name that resolves
differently a moment later (DNS rebinding) reaches nothing new.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import SplitResult, urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

from ferryman.contracts import ErrorCode, FerrymanError
from storage_worker.policy import SourceAccess

Resolve = Callable[[str, int], Awaitable[list[str]]]
"""Host name and port → the IP addresses it resolves to (as text)."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_PRIVATE = tuple(
    ipaddress.ip_network(network)
    for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
"""What `allow_private` opens (with loopback): RFC 1918, shared (CGNAT) and unique local."""


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses of `host` from the system resolver.

    Raises:
        OSError: the name does not resolve.
    """
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def redacted(url: str) -> str:
    """`url` safe to show: no user info, query or fragment (they may carry credentials)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "(a malformed URL)"
    if ":" in host:
        host = f"[{host}]"
    path = parts.path if len(parts.path) <= 200 else parts.path[:200] + "…"
    query = "?…" if parts.query else ""
    return f"{parts.scheme}://{host}{port}{path}{query}"


def refusal(address: IPAddress, allow_private: bool) -> str | None:
    """Why `address` may not be fetched from (None: it may)."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        reason = refusal(embedded, allow_private)
        return f"{reason} (inside {address})" if reason else None
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_link_local:
        return "a link-local address (as the cloud metadata service)"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if address.is_loopback:  # before reserved: ::1 is in the reserved ::/8
        return None if allow_private else "a loopback address"
    if address.is_reserved:
        return "a reserved address"
    if any(address in network for network in _PRIVATE):
        return None if allow_private else "a private address"
    if not address.is_global:
        return "a special-purpose address"
    return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address, where the packets go in the end
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


class SourceGuard:
    """Checks source URLs and the addresses they reach against one tenant's rule.

    Args:
        rule: the tenant's `sources` rule (None: no source is allowed).
        resolve: how host names are resolved (the system's by default).
    """

    def __init__(self, rule: SourceAccess | None, resolve: Resolve = system_resolve) -> None:
        self._rule = rule
        self._resolve = resolve

    def check_url(self, url: str) -> SplitResult:
        """The parts of `url` when its scheme and host are allowed.

        Raises:
            FerrymanError: `permission_denied` (no sources allowed, or not this scheme or
                host), `invalid_request` (a malformed URL).
        """
        shown = redacted(url)
        if self._rule is None:
            raise FerrymanError(
                ErrorCode.PERMISSION_DENIED,
                "puts from a source URL are not allowed for this tenant (the policy gives it"
                " no `sources`)",
                retryable=False,
            )
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises for a malformed port
        except ValueError:
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST, f"the source URL {shown} is malformed", retryable=False
            ) from None
        host = (parts.hostname or "").rstrip(".")
        if parts.scheme.lower() not in self._rule.schemes:
            raise FerrymanError(
                ErrorCode.PERMISSION_DENIED,
                f"the source {shown}: scheme {parts.scheme!r} is not allowed"
                f" (allowed: {', '.join(self._rule.schemes)})",
                retryable=False,
            )
        if not host or not any(fnmatch.fnmatchcase(host, p.lower()) for p in self._rule.hosts):
            raise FerrymanError(
                ErrorCode.PERMISSION_DENIED,
                f"the source {shown}: host {host[:253]!r} is not one the policy allows",
                retryable=False,
            )
        return parts

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses of `host` to connect to, every one of them checked.

        Raises:
            FerrymanError: `permission_denied` (an address is internal), `unavailable`
                (the name does not resolve; retryable).
        """
        allow_private = self._rule is not None and self._rule.allow_private
        literal = _literal(host)
        if literal is not None:
            found = [literal]
        else:
            try:
                found = [
                    ipaddress.ip_address(a.split("%", 1)[0])
                    for a in await self._resolve(host, port)
                ]
            except (OSError, ValueError) as exc:
                raise FerrymanError(
                    ErrorCode.UNAVAILABLE,
                    f"the source host {host[:253]!r} does not resolve: {exc}",
                    retryable=True,
                ) from None
            if not found:
                raise FerrymanError(
                    ErrorCode.UNAVAILABLE,
                    f"the source host {host[:253]!r} has no address",
                    retryable=True,
                )
        for address in found:
            reason = refusal(address, allow_private)
            if reason is not None:
                raise FerrymanError(
                    ErrorCode.PERMISSION_DENIED,
                    f"the source host {host[:253]!r} is {reason}: not fetched (internal"
                    " addresses are refused unless the policy allows private ones)",
                    retryable=False,
                )
        return [str(address) for address in found]


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


class GuardedResolver(AbstractResolver):
    """The HTTP client's resolver: only addresses `guard` checked are ever connected to."""

    def __init__(self, guard: SourceGuard) -> None:
        self._guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The checked addresses of `host`.

        Raises:
            FerrymanError: see `SourceGuard.addresses`.
        """
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=socket.IPPROTO_TCP,
                flags=socket.AI_NUMERICHOST,
            )
            for address in await self._guard.addresses(host, port)
        ]

    async def close(self) -> None:
        """Nothing to release."""
