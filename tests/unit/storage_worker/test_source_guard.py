"""The SSRF guard of puts from a source URL: which schemes, hosts and addresses a fetch may
reach (resolution injected: no real DNS)."""

from __future__ import annotations

import ipaddress

import pytest

from ferryman.contracts import ErrorCode, FerrymanError
from storage_worker.policy import SourceAccess
from storage_worker.source_guard import SourceGuard, redacted, refusal


def resolving(table: dict[str, list[str]]):
    calls: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        if host not in table:
            raise OSError(f"{host} does not resolve")
        return table[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


RULE = SourceAccess(schemes=["https"], hosts=["*.example.com", "files.partner.io"])


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "special-purpose"),
        ("192.0.2.10", "special-purpose"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fd12:3456::1", "private"),
        ("ff02::1", "multicast"),
        ("fec0::1", "site-local"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 of 169.254.169.254
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),  # Teredo, client 127.0.0.1
    ],
)
def test_internal_addresses_are_refused(address: str, kind: str) -> None:
    reason = refusal(ipaddress.ip_address(address), allow_private=False)

    assert reason is not None
    assert kind in reason


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.1.2.3", "192.168.1.1", "100.64.0.1", "::1", "fd00::1"]
)
def test_allow_private_opens_loopback_and_private_ranges(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), allow_private=True) is None


@pytest.mark.parametrize(
    "address",
    ["169.254.169.254", "::ffff:169.254.169.254", "fe80::1", "0.0.0.0", "224.0.0.1", "240.0.0.1"],
)
def test_allow_private_never_opens_metadata_multicast_or_reserved(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), allow_private=True) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), allow_private=False) is None


def test_without_a_sources_rule_nothing_is_fetched() -> None:
    with pytest.raises(FerrymanError) as refused:
        SourceGuard(None).check_url("https://files.partner.io/a.pdf")

    assert refused.value.code is ErrorCode.PERMISSION_DENIED
    assert "sources" in refused.value.message


@pytest.mark.parametrize(
    "url",
    [
        "http://files.partner.io/a.pdf",  # scheme not allowed
        "https://example.com/a.pdf",  # *.example.com is subdomains only
        "https://example.com.evil.io/a.pdf",
        "https://files.partner.io.evil.io/a.pdf",
        "https://evil.io/?host=files.partner.io",
        "https://files.partner.io@evil.io/a.pdf",
        "https://169.254.169.254/latest/meta-data/",
    ],
)
def test_schemes_and_hosts_outside_the_rule_are_refused(url: str) -> None:
    with pytest.raises(FerrymanError) as refused:
        SourceGuard(RULE).check_url(url)

    assert refused.value.code is ErrorCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    "url",
    ["https://files.partner.io/a.pdf", "https://cdn.example.com:8443/x", "HTTPS://A.EXAMPLE.COM/"],
)
def test_hosts_of_the_rule_pass(url: str) -> None:
    assert SourceGuard(RULE).check_url(url).hostname is not None


def test_messages_never_show_credentials_of_the_url() -> None:
    url = "http://user:hunter2@files.partner.io/a.pdf?X-Amz-Signature=s3cr3t#frag"

    with pytest.raises(FerrymanError) as refused:
        SourceGuard(RULE).check_url(url)

    assert "hunter2" not in refused.value.message
    assert "s3cr3t" not in refused.value.message
    assert redacted(url) == "http://files.partner.io/a.pdf?…"


async def test_a_host_resolving_to_loopback_is_refused() -> None:
    resolve = resolving({"files.partner.io": ["127.0.0.1"]})

    with pytest.raises(FerrymanError) as refused:
        await SourceGuard(RULE, resolve).addresses("files.partner.io", 443)

    assert refused.value.code is ErrorCode.PERMISSION_DENIED
    assert "loopback" in refused.value.message
    assert resolve.calls == [("files.partner.io", 443)]  # type: ignore[attr-defined]


async def test_one_internal_address_among_public_ones_is_refused() -> None:
    resolve = resolving({"files.partner.io": ["93.184.216.34", "::ffff:10.0.0.7"]})

    with pytest.raises(FerrymanError) as refused:
        await SourceGuard(RULE, resolve).addresses("files.partner.io", 443)

    assert refused.value.code is ErrorCode.PERMISSION_DENIED


async def test_public_addresses_are_what_the_connection_uses() -> None:
    resolve = resolving({"files.partner.io": ["93.184.216.34", "2606:4700:4700::1111"]})

    found = await SourceGuard(RULE, resolve).addresses("files.partner.io", 443)

    assert found == ["93.184.216.34", "2606:4700:4700::1111"]


async def test_an_address_literal_is_checked_without_resolving() -> None:
    resolve = resolving({})
    guard = SourceGuard(SourceAccess(hosts=["*"]), resolve)

    with pytest.raises(FerrymanError) as refused:
        await guard.addresses("[::ffff:169.254.169.254]", 80)

    assert "link-local" in refused.value.message
    assert resolve.calls == []  # type: ignore[attr-defined]


async def test_a_name_that_does_not_resolve_is_unavailable_and_retryable() -> None:
    with pytest.raises(FerrymanError) as failed:
        await SourceGuard(RULE, resolving({})).addresses("files.partner.io", 443)

    assert failed.value.code is ErrorCode.UNAVAILABLE
    assert failed.value.retryable is True
