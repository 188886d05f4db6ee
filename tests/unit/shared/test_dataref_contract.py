"""The dataref content part of chat requests: its wire form and what it refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from ferryman.contracts import ChatRequest
from ferryman.contracts.llm import DataRefPart
from ferryman.contracts.storage import ObjectRef, object_dataref, parse_dataref
from ferryman.replies import default_registry
from ferryman.request_encoding import RequestOptions, encode_request


def request_with(*parts: object, role: str = "user") -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "mock/echo", "messages": [{"role": role, "content": list(parts)}]}
    )


def test_a_dataref_part_travels_with_as_spelled_as_on_the_wire() -> None:
    part = DataRefPart(type="dataref", dataref=ObjectRef(key="q3.pdf", backend="s3"), as_="text")
    request = ChatRequest.model_validate(
        {"model": "mock/echo", "messages": [{"role": "user", "content": [part]}]}
    )

    _, value = encode_request(
        event_type="ferryman.llm.chat.requested",
        data=request,
        request_id="r-1",
        source="/test",
        reply_topic="t.results",
        reply_token=None,
        options=RequestOptions(),
        registry=default_registry(),
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )

    sent = json.loads(value)["messages"][0]["content"][0]
    assert sent == {"type": "dataref", "dataref": {"key": "q3.pdf", "backend": "s3"}, "as": "text"}
    assert ChatRequest.model_validate(json.loads(value)).datarefs() == [part]


def test_as_defaults_to_auto_and_datarefs_are_listed_in_order() -> None:
    request = request_with(
        {"type": "dataref", "dataref": {"key": "a.txt"}},
        {"type": "text", "text": "and"},
        {"type": "dataref", "dataref": {"key": "b.png"}, "as": "image"},
    )

    assert [(p.dataref.key, p.as_) for p in request.datarefs()] == [
        ("a.txt", "auto"),
        ("b.png", "image"),
    ]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "dataref", "dataref": {"key": "a.txt"}, "as": "pdf"},
        {"type": "dataref", "dataref": {"key": ""}},
        {"type": "dataref", "dataref": {"key": "a.txt", "backend": "no spaces"}},
        {"type": "dataref", "dataref": {"key": "a.txt", "bucket": "other"}},
        {"type": "dataref", "key": "a.txt"},
    ],
)
def test_malformed_datarefs_are_refused(part: object) -> None:
    with pytest.raises(ValidationError):
        request_with(part)


@pytest.mark.parametrize("role", ["system", "assistant"])
def test_only_user_messages_take_datarefs(role: str) -> None:
    with pytest.raises(ValidationError):
        request_with({"type": "dataref", "dataref": {"key": "a.txt"}}, role=role)


@pytest.mark.parametrize(
    ("backend", "key"),
    [("s3", "reports/q3 final.pdf"), ("local", "a/b/c.txt"), ("gcs", "caf\u00e9 #1?.md")],
)
def test_an_object_events_dataref_names_the_object_and_a_chat_takes_it(
    backend: str, key: str
) -> None:
    reference = object_dataref(backend, key)
    part = DataRefPart.model_validate({"type": "dataref", "dataref": reference})

    assert reference.startswith(f"ferryman-storage://{backend}/")
    assert parse_dataref(reference) == ObjectRef(key=key, backend=backend)
    assert part.dataref == ObjectRef(key=key, backend=backend)


@pytest.mark.parametrize(
    "reference",
    ["https://b/k", "ferryman-storage:///k", "ferryman-storage://b/k?x=1", "ferryman-storage://b/"],
)
def test_a_malformed_dataref_reference_is_refused(reference: str) -> None:
    with pytest.raises(ValidationError):
        DataRefPart.model_validate({"type": "dataref", "dataref": reference})
