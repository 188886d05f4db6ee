"""The published AsyncAPI document is generated from the contract models and kept in sync."""

from __future__ import annotations

import json
from pathlib import Path

from shared.contracts.asyncapi import build_asyncapi

ROOT = Path(__file__).resolve().parents[2]


def test_committed_asyncapi_document_matches_the_contract_models() -> None:
    committed = json.loads((ROOT / "shared" / "asyncapi.json").read_text())
    assert committed == json.loads(json.dumps(build_asyncapi())), "run `make asyncapi`"


def test_asyncapi_document_describes_every_llm_channel_and_event() -> None:
    document = build_asyncapi()
    addresses = {c["address"] for c in document["channels"].values()}
    titles = {m["title"] for m in document["components"]["messages"].values()}
    request_schema = document["components"]["schemas"]["ChatRequest"]

    assert addresses == {"llm.requests", "llm.results", "llm.requests.dlq"}
    assert {
        "ferryman.llm.chat.requested",
        "ferryman.llm.chat.chunk",
        "ferryman.llm.chat.completed",
        "ferryman.llm.chat.failed",
    } <= titles
    assert request_schema["additionalProperties"] is False
    assert request_schema["required"] == ["model", "messages"]
