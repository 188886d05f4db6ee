"""HTTP responses of OpenAPI operations as tool results or failures."""

from __future__ import annotations

import base64
import json

import httpx2
import pytest

from ferryman.contracts import FerrymanError
from mcp_worker.openapi.http_response import api_result


def _response(
    status: int, body: bytes = b"", media: str | None = None, **headers: str
) -> httpx2.Response:
    if media is not None:
        headers["content-type"] = media
    return httpx2.Response(status, content=body, headers=headers)


def test_a_json_object_is_structured_content_and_text() -> None:
    result = api_result(
        _response(200, b'{"id": 7, "name": "lamp"}', "application/json"), api="inv", max_bytes=1000
    )

    assert result.structured == {"id": 7, "name": "lamp"}
    assert json.loads(result.content[0]["text"]) == {"id": 7, "name": "lamp"}
    assert (result.is_error, result.truncated) == (False, False)


def test_a_json_array_is_wrapped_for_an_object_schema() -> None:
    result = api_result(
        _response(200, b"[1, 2]", "application/json"), api="inv", max_bytes=1000, wrap_output=True
    )

    assert result.structured == {"result": [1, 2]}


def test_text_is_cut_at_the_limit_and_says_so() -> None:
    result = api_result(
        _response(200, ("é" * 10 + "x" * 10).encode(), "text/plain"), api="inv", max_bytes=5
    )

    assert result.content == [{"type": "text", "text": "éé"}]
    assert result.truncated


def test_binary_is_a_resource_up_to_the_limit_then_a_note() -> None:
    small = api_result(
        _response(200, b"\x00\x01", "application/octet-stream"), api="inv", max_bytes=10
    )
    large = api_result(_response(200, b"\x00" * 20, "image/png"), api="inv", max_bytes=10)

    resource = small.content[0]["resource"]
    assert base64.b64decode(resource["blob"]) == b"\x00\x01"
    assert resource["mimeType"] == "application/octet-stream"
    assert large.content[0]["text"] == "(a image/png body of 20 bytes, over the 10-byte limit)"
    assert large.truncated


def test_an_empty_body_says_its_status() -> None:
    assert api_result(_response(204), api="inv", max_bytes=10).content == [
        {"type": "text", "text": "(no content, HTTP 204)"}
    ]


def test_a_client_error_is_a_result_the_model_can_read() -> None:
    problem = b'{"title": "Not Found", "detail": "no item 9", "status": 404}'
    result = api_result(
        _response(404, problem, "application/problem+json"), api="inv", max_bytes=10
    )

    assert result.is_error
    assert result.status == 404
    assert result.content == [{"type": "text", "text": "HTTP 404 Not Found: Not Found: no item 9"}]


@pytest.mark.parametrize(
    ("status", "code"), [(429, "rate_limited"), (503, "unavailable"), (500, "unavailable")]
)
def test_limits_and_server_errors_fail_retryable_with_retry_after(status: int, code: str) -> None:
    with pytest.raises(FerrymanError) as failed:
        api_result(
            _response(status, b"busy", "text/plain", **{"retry-after": "3"}),
            api="inv",
            max_bytes=10,
        )

    assert (failed.value.code, failed.value.retryable) == (code, True)
    assert failed.value.retry_after == 3
    assert failed.value.upstream == "inv"
    assert "HTTP " + str(status) in failed.value.message


def test_a_redirect_is_never_followed() -> None:
    with pytest.raises(FerrymanError, match="redirects are not followed"):
        api_result(_response(302, location="http://elsewhere/"), api="inv", max_bytes=10)
