"""The signer of local URLs: what it signs, and every way a URL is refused."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.signed_urls import (
    OBJECTS_PATH,
    UrlGrant,
    UrlRefused,
    UrlSigner,
    default_base_url,
    signing_for,
    signing_key,
)

KEY = b"k" * 32
NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def signer(clock: Clock) -> UrlSigner:
    return UrlSigner(KEY, "https://storage.example/", clock=clock)


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def upload_query(signer: UrlSigner) -> dict[str, str]:
    with signing_for("acme", 1000, "req-1"):
        signed = signer.presign("local", "acme/docs/été.txt", "PUT", 60, content_type="text/plain")
    return query_of(signed.url)


def test_a_get_url_names_the_object_and_verifies(signer: UrlSigner) -> None:
    signed = signer.presign("local", "acme/docs/été report.txt", "GET", 300)

    parts = urlsplit(signed.url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "storage.example", OBJECTS_PATH)
    assert signed.method == "GET"
    assert signed.expires_at == datetime.fromtimestamp(NOW + 300, UTC)
    assert signed.headers == {}
    grant = signer.verify(query_of(signed.url), "GET", None)
    assert grant == UrlGrant(
        method="GET", backend="local", key="acme/docs/été report.txt", expires=int(NOW) + 300
    )


def test_a_put_url_carries_the_tenant_its_limit_and_the_content_type(signer: UrlSigner) -> None:
    with signing_for("acme", 1000, "req-1"):
        signed = signer.presign("local", "acme/a.txt", "PUT", 60, content_type="text/plain")

    assert signed.headers == {"Content-Type": "text/plain"}
    grant = signer.verify(query_of(signed.url), "PUT", "text/plain")
    assert (grant.tenant, grant.max_bytes, grant.request, grant.content_type) == (
        "acme",
        1000,
        "req-1",
        "text/plain",
    )


def test_outside_a_signing_scope_a_url_names_no_tenant(signer: UrlSigner) -> None:
    with signing_for("acme", 1000, "req-1"):
        pass
    signed = signer.presign("local", "a.txt", "PUT", 60)

    grant = signer.verify(query_of(signed.url), "PUT", "application/pdf")
    assert (grant.tenant, grant.max_bytes, grant.request, grant.content_type) == (None,) * 4


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("backend", "other"),
        ("key", "acme/docs/other.txt"),
        ("expires", str(int(NOW) + 10_000)),
        ("content_type", "text/html"),
        ("max_bytes", "1000000000"),
        ("tenant", "globex"),
        ("request", "req-2"),
        ("signature", "A" * 43),
    ],
)
def test_every_field_is_signed(signer: UrlSigner, field: str, value: str) -> None:
    query = upload_query(signer)
    query[field] = value
    content_type = value if field == "content_type" else "text/plain"

    with pytest.raises(UrlRefused, match="signature does not match"):
        signer.verify(query, "PUT", content_type)


@pytest.mark.parametrize("field", ["max_bytes", "tenant", "request", "content_type", "signature"])
def test_a_field_taken_away_breaks_the_signature(signer: UrlSigner, field: str) -> None:
    query = upload_query(signer)
    del query[field]

    with pytest.raises(UrlRefused, match="signature does not match"):
        signer.verify(query, "PUT", "text/plain")


def test_a_field_added_to_a_get_url_breaks_the_signature(signer: UrlSigner) -> None:
    query = query_of(signer.presign("local", "acme/a.txt", "GET", 60).url)
    query["tenant"] = "acme"

    with pytest.raises(UrlRefused, match="signature does not match"):
        signer.verify(query, "GET", None)


def test_another_key_signs_other_urls(clock: Clock) -> None:
    theirs = UrlSigner(b"x" * 32, "https://storage.example", clock=clock)
    ours = UrlSigner(KEY, "https://storage.example", clock=clock)

    query = query_of(theirs.presign("local", "a.txt", "GET", 60).url)

    with pytest.raises(UrlRefused, match="signature does not match"):
        ours.verify(query, "GET", None)


def test_a_url_expires(signer: UrlSigner, clock: Clock) -> None:
    query = query_of(signer.presign("local", "a.txt", "GET", 60).url)

    clock.now = NOW + 59.9
    assert signer.verify(query, "GET", None).key == "a.txt"
    clock.now = NOW + 60
    with pytest.raises(UrlRefused, match="expired"):
        signer.verify(query, "GET", None)


def test_a_url_is_for_its_method_only(signer: UrlSigner) -> None:
    query = query_of(signer.presign("local", "a.txt", "GET", 60).url)
    changed = {**query, "method": "PUT"}

    with pytest.raises(UrlRefused, match="for GET, not PUT"):
        signer.verify(query, "PUT", None)
    with pytest.raises(UrlRefused, match="signature does not match"):
        signer.verify(changed, "PUT", None)


def test_a_put_url_takes_the_content_type_it_was_signed_for(signer: UrlSigner) -> None:
    query = upload_query(signer)

    assert signer.verify(query, "PUT", "Text/Plain ").content_type == "text/plain"
    with pytest.raises(UrlRefused, match="takes Content-Type text/plain"):
        signer.verify(query, "PUT", "text/html")
    with pytest.raises(UrlRefused, match="takes Content-Type text/plain"):
        signer.verify(query, "PUT", None)


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"method": "GET", "backend": "local", "key": "a.txt"},
        {"method": "DELETE", "backend": "local", "key": "a.txt", "expires": "1"},
        {"method": "GET", "backend": "local", "key": "a.txt", "expires": "soon"},
        {"method": "GET", "backend": "local", "key": "a.txt", "expires": "١٢٣"},
        {"method": "PUT", "backend": "local", "key": "a", "expires": "1", "max_bytes": "-1"},
    ],
)
def test_what_is_not_a_signed_url_is_refused(signer: UrlSigner, query: dict[str, str]) -> None:
    with pytest.raises(UrlRefused, match="not a signed object URL"):
        signer.verify(query, "GET", None)


@pytest.mark.parametrize("expires_in", [0, -5, 7 * 24 * 3600 + 1])
def test_an_expiry_outside_a_week_is_refused(signer: UrlSigner, expires_in: int) -> None:
    with pytest.raises(FerrymanError) as caught:
        signer.presign("local", "a.txt", "GET", expires_in)

    assert caught.value.code == ErrorCode.INVALID_REQUEST


def test_the_key_comes_from_a_reference(tmp_path: Path) -> None:
    secret_file = tmp_path / "key"
    secret_file.write_text("f" * 40 + "\n")

    assert signing_key("env:URL_KEY", {"URL_KEY": "e" * 32}) == b"e" * 32
    assert signing_key(f"file:{secret_file}", {}) == b"f" * 40


@pytest.mark.parametrize(
    ("reference", "environ", "reason"),
    [
        ("env:URL_KEY", {}, "not set"),
        ("env:URL_KEY", {"URL_KEY": "short-secret-value"}, "at least 32 bytes"),
        ("file:/no/such/key", {}, "FileNotFoundError"),
        ("a-literal-secret-value-that-is-long-enough", {}, "credential reference"),
    ],
)
def test_a_bad_key_is_refused_without_showing_it(
    reference: str, environ: dict[str, str], reason: str
) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        signing_key(reference, environ)

    assert "short-secret-value" not in str(caught.value)
    assert "a-literal-secret" not in str(caught.value)


def test_without_a_key_each_process_signs_with_its_own(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="storage_worker.signed_urls"):
        first = signing_key(None, {})
    second = signing_key(None, {})

    assert len(first) == 32
    assert first != second
    assert [r.getMessage() for r in caplog.records if "this replica only" in r.getMessage()]


@pytest.mark.parametrize(
    ("host", "expected"),
    [("127.0.0.1", "http://127.0.0.1:8080"), ("::1", "http://[::1]:8080")],
)
def test_the_default_base_is_the_workers_own_address(host: str, expected: str) -> None:
    assert default_base_url(host, 8080) == expected


def test_a_worker_listening_everywhere_is_reached_by_its_host_name() -> None:
    import socket

    assert default_base_url("0.0.0.0", 9000) == f"http://{socket.gethostname()}:9000"
