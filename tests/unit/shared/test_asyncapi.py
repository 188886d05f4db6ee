"""The published AsyncAPI document is generated from the contract models and kept in sync."""

from __future__ import annotations

import json
from pathlib import Path

from ferryman.contracts import ChatFailed, ChatRequest
from ferryman.contracts.asyncapi import build_asyncapi
from ferryman.contracts.channels import EventMessage, RequestDomain

ROOT = Path(__file__).resolve().parents[3]


def test_committed_asyncapi_document_matches_the_contract_models() -> None:
    committed = json.loads((ROOT / "shared" / "asyncapi.json").read_text())
    assert committed == json.loads(json.dumps(build_asyncapi())), "run `make asyncapi`"


def test_asyncapi_document_describes_every_channel_and_event() -> None:
    document = build_asyncapi()
    addresses = {c["address"] for c in document["channels"].values()}
    titles = {m["title"] for m in document["components"]["messages"].values()}
    request_schema = document["components"]["schemas"]["ChatRequest"]

    assert addresses == {
        "llm.requests",
        "llm.results",
        "llm.requests.dlq",
        "ferryman.health",
        "ferryman.usage",
        "mcp.requests",
        "mcp.results",
        "mcp.requests.dlq",
        "mcp.control",
        "mcp.catalog",
        "mcp.audit",
        "storage.requests",
        "storage.results",
        "storage.requests.dlq",
        "storage.events",
    }
    assert {
        "ferryman.llm.chat.requested",
        "ferryman.llm.chat.chunk",
        "ferryman.llm.chat.restarted",
        "ferryman.llm.chat.completed",
        "ferryman.llm.chat.failed",
        "ferryman.health.reported",
        "ferryman.usage.recorded",
        "ferryman.mcp.tool.call.requested",
        "ferryman.mcp.tool.call.completed",
        "ferryman.mcp.progress",
        "ferryman.mcp.failed",
        "ferryman.mcp.cancel.requested",
        "ferryman.mcp.catalog.updated",
        "ferryman.mcp.call.audited",
        "ferryman.mcp.tool.changed",
    } <= titles
    assert request_schema["additionalProperties"] is False
    assert request_schema["required"] == ["model", "messages"]


def test_the_results_channel_carries_the_restarted_event_and_chunks_carry_their_attempt() -> None:
    document = build_asyncapi()
    results = document["channels"]["llmResults"]["messages"]
    publish = document["operations"]["publishLlmResults"]["messages"]
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


def test_every_reply_event_declares_the_run_id_and_requests_the_reply_token() -> None:
    document = build_asyncapi()
    chunk = document["components"]["messages"]["chatChunk"]["headers"]
    request = document["components"]["messages"]["chatRequested"]["headers"]

    assert "ce_runid" in chunk["required"]
    assert "ce_replytoken" in request["properties"]


def test_a_domain_added_to_the_registry_gets_its_channels_and_operations() -> None:
    probe = RequestDomain(
        name="probe",
        title="A test domain",
        request_topic="probe.requests",
        reply_topic="probe.results",
        requests=(EventMessage("probeRequested", "ferryman.probe.requested", ChatRequest),),
        replies=(EventMessage("probeFailed", "ferryman.probe.failed", ChatFailed),),
    )

    document = build_asyncapi(domains=[probe])

    assert {c["address"] for c in document["channels"].values()} == {
        "probe.requests",
        "probe.results",
        "probe.requests.dlq",
        "ferryman.health",
        "ferryman.usage",
    }
    assert document["operations"]["consumeProbeRequests"]["action"] == "receive"
    assert document["components"]["messages"]["probeFailed"]["title"] == "ferryman.probe.failed"
