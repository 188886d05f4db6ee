"""Credentials are removed from upstream text: known key values and the shapes keys take."""

from __future__ import annotations

import json

import pytest

from ferryman_runtime.redaction import REDACTED, redact

AZURE_84 = "A1b2C3d4E5f6G7h8I9j0" * 4 + "K1l2"
JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJhdWQiOiJodHRwczovL2NvZ25pdGl2ZXNlcnZpY2VzLmF6dXJlLmNvbSJ9"
    ".c2lnbmF0dXJlLWJ5dGVzLWhlcmU"
)


@pytest.mark.parametrize(
    ("template", "secret"),
    [
        ("Incorrect API key provided: {}.", "sk-proj-abcDEF123456ghiJKL789"),
        ("Incorrect API key provided: {}.", "sk-abc12***************xyz9"),
        ("invalid x-api-key {}", "sk-ant-api03-AbC_dEf-123456789"),
        ("API key not valid: {}", "AIzaSyD-1234567890abcdefghijklmnopqrs"),
        ("token Bearer {} rejected", "abc.DEF-123_xyz"),
        ("Entra token {} expired", JWT),
        ("invalid subscription key {}", "0123456789abcdef0123456789ABCDEF"),
        ("key {} is wrong", AZURE_84),
        ("GET https://g.test/v1/models?key={}&alt=sse failed", "plainvalue123"),
        ("api-key: {}", "opaque-value-42"),
        ("Ocp-Apim-Subscription-Key={}", "opaque-value-42"),
    ],
    ids=[
        "openai", "openai-masked", "anthropic", "google", "bearer", "jwt", "azure-32", "azure-84",
        "query", "api-key-header", "apim-header",
    ],
)  # fmt: skip
def test_each_key_shape_is_redacted(template: str, secret: str) -> None:
    redacted = redact(template.format(secret))

    assert secret not in redacted
    assert redacted == template.format(REDACTED)


def test_headers_echoed_as_json_lose_their_values_but_keep_their_names() -> None:
    echoed = json.dumps(
        {"Authorization": "Bearer opaque.token", "x-goog-api-key": "opaque-goog", "Accept": "*/*"}
    )

    redacted = redact(f"proxy saw {echoed}")

    assert "opaque" not in redacted
    assert '"Authorization": "[REDACTED]"' in redacted
    assert '"x-goog-api-key": "[REDACTED]"' in redacted
    assert '"Accept": "*/*"' in redacted


def test_headers_echoed_as_escaped_json_inside_a_json_string_are_redacted() -> None:
    inner = json.dumps({"api-key": "opaque-azure-value"})
    outer = json.dumps({"message": f"bad request {inner}"})

    assert "opaque-azure-value" not in redact(outer)


def test_known_values_are_redacted_whatever_their_shape_longest_first() -> None:
    text = "echo: my-plain-key-1234 and my-plain-key-1234-extended"

    redacted = redact(text, ["my-plain-key-1234", "my-plain-key-1234-extended", None])

    assert redacted == f"echo: {REDACTED} and {REDACTED}"


def test_short_known_values_are_not_searched_for() -> None:
    assert redact("unused fields were ignored", ["unused"]) == "unused fields were ignored"


@pytest.mark.parametrize(
    "text",
    [
        "The model `gpt-4o-mini` does not exist or you do not have access to it.",
        "request req_0123456789abcdef0123456789abcdef failed",
        "trace 3f2a9c1e-8b4d-4e6f-9a0b-1c2d3e4f5a6b",
        "prompt is too long: 207791 tokens > 200000 maximum",
        "task-runner: skipping disk-backed queue",
    ],
)
def test_ordinary_error_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        (
            "https://b.s3.amazonaws.com/k.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIAEXAMPLE%2F20261130%2Fus-east-1&X-Amz-Date=20261130T000000Z"
            "&X-Amz-Expires=900&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLE"
            "&X-Amz-Signature=0123456789abcdef0123456789abcdef0123456789abcdef",
            ["AKIAEXAMPLE", "FwoGZXIvYXdzEXAMPLE", "0123456789abcdef0123456789abcdef0123"],
        ),
        (
            "https://storage.googleapis.com/b/k.png?X-Goog-Algorithm=GOOG4-RSA-SHA256"
            "&X-Goog-Credential=sa%40p.iam.gserviceaccount.com%2F20261130"
            "&X-Goog-Signature=9f8e7d6c5b4a39281706f5e4d3c2b1a0",
            ["sa%40p.iam", "9f8e7d6c5b4a39281706f5e4d3c2b1a0"],
        ),
        (
            "http://127.0.0.1:8083/objects?method=GET&backend=local&key=acme%2Fk.png"
            "&expires=1764460800&signature=c2lnbmF0dXJlLW9mLXRoZS13b3JrZXI",
            ["c2lnbmF0dXJlLW9mLXRoZS13b3JrZXI"],
        ),
    ],
    ids=["s3", "gcs", "local"],
)
def test_presigned_urls_lose_their_signatures_and_credentials(url: str, secrets: list[str]) -> None:
    redacted = redact(f"Error while downloading {url}.")

    for secret in secrets:
        assert secret not in redacted
    assert "Error while downloading https://" in redacted or "http://127.0.0.1" in redacted


@pytest.mark.parametrize(
    ("url", "password", "kept"),
    [
        ("redis://cache:s3cretpass@redis.test:6379/0", "s3cretpass", "redis://cache:"),
        ("rediss://:pa/ss#wo?rd@redis.test:6380", "pa/ss#wo?rd", "rediss://:"),
        ("Port could not be cast: 'redis://u:p4ss@h'", "p4ss", "redis://u:"),
        ("https://spans:hunter2@otel.test/v1/traces", "hunter2", "https://spans:"),
    ],
)
def test_a_urls_password_is_redacted_and_its_user_and_host_kept(
    url: str, password: str, kept: str
) -> None:
    cleaned = redact(url)
    assert password not in cleaned
    assert f"{kept}{REDACTED}@" in cleaned


def test_a_url_without_a_password_is_left_alone() -> None:
    text = "GET https://user@host.test:8443/path and redis://redis.test:6379/0 failed"
    assert redact(text) == text
