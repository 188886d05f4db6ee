"""The storage policy file: tenants' spaces and limits, and what is refused."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from ferryman.contracts import ErrorCode, FerrymanError
from storage_worker.content_types import allowed, compatible, detect
from storage_worker.policy import PolicyError, default_policy, parse_policy, space_of, tenant_name

POLICY = b"""
backends:
  local: {type: local, root: /srv/storage}
  s3:
    type: s3
    bucket: acme-documents
    access_key_id: env:S3_KEY_ID
    secret_access_key: env:S3_SECRET
tenants:
  acme:
    default: s3
    spaces: {s3: "tenants/acme/", local: "acme/"}
    max_object_bytes: 1000
    content_types: ["application/pdf", "text/*"]
  "*":
    spaces: {local: "{tenant}/"}
"""


def test_tenants_get_their_own_space() -> None:
    policy = parse_policy(POLICY)

    acme = space_of(policy, "acme", None)
    acme_local = space_of(policy, "acme", "local")
    other = space_of(policy, "globex", None)

    assert (acme.backend, acme.prefix) == ("s3", "tenants/acme/")
    assert (acme_local.backend, acme_local.prefix) == ("local", "acme/")
    assert (other.backend, other.prefix) == ("local", "globex/")
    assert acme.full_key("a/b.pdf") == "tenants/acme/a/b.pdf"
    assert acme.own_key("tenants/acme/a/b.pdf") == "a/b.pdf"


def test_a_tenant_without_a_space_on_a_backend_is_denied() -> None:
    with pytest.raises(FerrymanError) as denied:
        space_of(parse_policy(POLICY), "globex", "s3")

    assert denied.value.code == ErrorCode.PERMISSION_DENIED


@pytest.mark.parametrize("name", ["../acme", "a/b", ".", "..", "x" * 200, "sp ace"])
def test_unsafe_tenant_names_are_refused(name: str) -> None:
    with pytest.raises(FerrymanError) as refused:
        tenant_name(name)

    assert refused.value.code == ErrorCode.PERMISSION_DENIED


def test_a_request_without_a_tenant_is_the_default_tenant() -> None:
    space = space_of(default_policy(Path("/tmp/x")), tenant_name(None), None)

    assert space.prefix == "default/"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"backends: {}\ntenants: {}", "backends"),
        (b"backends: {l: {type: local, root: /x}}\ntenants: {a: {spaces: {s3: p/}}}", "unknown"),
        (b"backends: {l: {type: local, root: /x}}\ntenants: {a: {spaces: {l: p}}}", "ends with /"),
        (b"backends: {l: {type: local, root: /x}}\ntenants: {a: {spaces: {l: ../p/}}}", "relative"),
        (
            b"backends: {s: {type: s3, bucket: abc, secret_access_key: plain}}\n"
            b"tenants: {a: {spaces: {s: p/}}}",
            "secret_access_key",
        ),
        (b"- a list", "mapping"),
    ],
)
def test_bad_policies_are_refused_naming_the_field(document: bytes, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(document)


def test_content_types_are_detected_from_the_bytes() -> None:
    assert detect(b"%PDF-1.7\n") == "application/pdf"
    assert detect(b"\x89PNG\r\n\x1a\n" + bytes(16)) == "image/png"
    assert detect("plain text, caf\u00e9".encode()) == "text/plain"
    assert detect(b"\x00\x01\x02binary") == "application/octet-stream"
    latin_1 = "Le caf\u00e9 du p\u00eacheur ouvre \u00e0 l'aube, pr\u00e8s du quai.\n" * 20
    assert detect(latin_1.encode("latin-1")) == "text/plain"
    assert detect(bytes(range(256)) * 8) == "application/octet-stream"
    assert detect(random.Random(3).randbytes(4096)) == "application/octet-stream"
    assert compatible("text/markdown", "text/plain")
    assert not compatible("image/png", "text/plain")
    assert allowed("text/plain; charset=utf-8", ["text/*"])
    assert not allowed("image/png", ["application/pdf", "text/*"])
