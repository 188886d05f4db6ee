"""The published AsyncAPI document is generated from the contract models and kept in sync."""

from __future__ import annotations

import json
from pathlib import Path

from ferryman.contracts.asyncapi import build_asyncapi

ROOT = Path(__file__).resolve().parents[2]


def test_committed_asyncapi_document_matches_the_contract_models() -> None:
    committed = json.loads((ROOT / "shared" / "asyncapi.json").read_text())
    assert committed == json.loads(json.dumps(build_asyncapi())), "run `make asyncapi`"


def test_asyncapi_document_describes_every_channel_and_event() -> None:
    document = build_asyncapi()
    addresses = {c["address"] for c in document["channels"].values()}
    titles = {m["title"] for m in document["components"]["messages"].values()}
    request_schema = document["components"]["schemas"]["ChatRequest"]

    assert addresses == {"llm.requests", "llm.results", "llm.requests.dlq", "ferryman.health"}
    assert {
        "ferryman.llm.chat.requested",
        "ferryman.llm.chat.chunk",
        "ferryman.llm.chat.restarted",
        "ferryman.llm.chat.completed",
        "ferryman.llm.chat.failed",
        "ferryman.health.reported",
    } <= titles
    assert request_schema["additionalProperties"] is False
    assert request_schema["required"] == ["model", "messages"]


def test_the_results_channel_carries_the_restarted_event_and_chunks_carry_their_attempt() -> None:
    document = build_asyncapi()
    results = document["channels"]["llmResults"]["messages"]
    publish = document["operations"]["publishChatResults"]["messages"]
    chunk = document["components"]["schemas"]["ChatChunk"]

    assert results["chatRestarted"] == {"$ref": "#/components/messages/chatRestarted"}
    assert {"$ref": "#/channels/llmResults/messages/chatRestarted"} in publish
    assert chunk["properties"]["attempt"]["minimum"] == 1


def test_health_reports_are_sent_on_the_health_topic_with_the_report_schema() -> None:
    document = build_asyncapi()
    channel = document["channels"]["health"]
    message = document["components"]["messages"]["healthReported"]

    assert channel["address"] == "ferryman.health"
    assert document["operations"]["publishHealthReports"]["action"] == "send"
    assert message["payload"] == {"$ref": "#/components/schemas/HealthReport"}
    assert message["headers"]["properties"]["ce_type"]["const"] == "ferryman.health.reported"
