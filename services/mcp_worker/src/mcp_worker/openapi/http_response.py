"""What an API's HTTP response becomes for the caller: a tool result the model can read, or a
failure in the shared taxonomy.

A JSON body is the structured content and a text block; text is a text block; a binary body
is an embedded resource up to a size limit, else a note of its size. An HTTP error the
caller can act on (4xx) is a result with `is_error` and the status and body summarised; a
rate limit, an unavailable upstream or a 5xx (after the retries) is a failure.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, cast

import httpx2

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman_runtime.upstreams.http_status import parse_retry_after

ERROR_SUMMARY_CHARS = 2000
"""Characters of an error body given to the caller."""

_FAILURES = {429: ErrorCode.RATE_LIMITED, 502: ErrorCode.UNAVAILABLE, 503: ErrorCode.UNAVAILABLE}


@dataclass(frozen=True)
class ApiResult:
    """A tool result from an HTTP response (MCP content blocks and structured content)."""

    status: int
    content: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    structured: dict[str, Any] | None = None
    is_error: bool = False
    truncated: bool = False
    cached: bool = False
    """The cache answered (see `cache.py`)."""


def api_result(
    response: httpx2.Response,
    *,
    api: str,
    max_bytes: int,
    wrap_output: bool = False,
) -> ApiResult:
    """The result of `response` (its body already read).

    Args:
        response: the API's answer.
        api: the API's name in the registry (named in errors).
        max_bytes: body bytes returned at most (text is cut, binary is not returned beyond).
        wrap_output: the operation's success schema is not an object: the JSON body is
            returned as `{"result": body}`.

    Raises:
        FerrymanError: the API is rate limited, unavailable or failed (5xx), retryable; or
            it redirected (never followed: a redirect could leave the API's host).
    """
    status = response.status_code
    if status >= 500 or status in _FAILURES:
        code = _FAILURES.get(status, ErrorCode.UNAVAILABLE)
        raise FerrymanError(
            code,
            f"{api} answered HTTP {status}: {_summary(response)}",
            retryable=True,
            retry_after=parse_retry_after(response.headers),
            upstream=api,
            status=status,
        )
    if 300 <= status < 400 and status != 304:
        raise FerrymanError(
            ErrorCode.UNAVAILABLE,
            f"{api} redirected (HTTP {status}); redirects are not followed",
            retryable=False,
            upstream=api,
            status=status,
        )
    if status >= 400:
        text = f"HTTP {status} {response.reason_phrase}: {_summary(response)}"
        return ApiResult(status=status, content=[_text(text)], is_error=True)
    return _success(response, max_bytes=max_bytes, wrap_output=wrap_output)


def _success(response: httpx2.Response, *, max_bytes: int, wrap_output: bool) -> ApiResult:
    status = response.status_code
    body = response.content
    if not body:
        return ApiResult(status=status, content=[_text(f"(no content, HTTP {status})")])
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if _is_json(media):
        try:
            value: Any = json.loads(body)
        except ValueError:
            value = None
        else:
            text, cut = _cut(json.dumps(value, ensure_ascii=False), max_bytes)
            structured = value if isinstance(value, dict) and not wrap_output else {"result": value}
            return ApiResult(
                status=status,
                content=[_text(text)],
                structured=cast(dict[str, Any], structured) if not cut else None,
                truncated=cut,
            )
    if media.startswith("text/") or _is_json(media) or not media:
        text, cut = _cut(response.text, max_bytes)
        return ApiResult(status=status, content=[_text(text)], truncated=cut)
    if len(body) > max_bytes:
        note = f"(a {media} body of {len(body)} bytes, over the {max_bytes}-byte limit)"
        return ApiResult(status=status, content=[_text(note)], truncated=True)
    resource = {
        "uri": _request_url(response),
        "mimeType": media,
        "blob": base64.b64encode(body).decode("ascii"),
    }
    return ApiResult(status=status, content=[{"type": "resource", "resource": resource}])


def _request_url(response: httpx2.Response) -> str:
    try:
        return str(response.request.url)
    except RuntimeError:  # a response built without a request (tests)
        return "about:blank"


def _is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _cut(text: str, max_bytes: int) -> tuple[str, bool]:
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text, False
    return encoded[:max_bytes].decode("utf-8", "ignore"), True


def _summary(response: httpx2.Response) -> str:
    """A problem document's title and detail, else the start of the body."""
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if _is_json(media):
        try:
            problem: Any = json.loads(response.content)
        except ValueError:
            problem = None
        if isinstance(problem, dict):
            fields = cast(dict[str, Any], problem)
            parts = [str(fields[k]) for k in ("title", "detail", "message") if fields.get(k)]
            if parts:
                return ": ".join(parts)[:ERROR_SUMMARY_CHARS]
    return response.text[:ERROR_SUMMARY_CHARS] or "(no body)"
