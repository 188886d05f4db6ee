"""What the runtime does with records of a followed topic, fed without Kafka: the catalog
view (latest record per server, tombstones, the access rule, quarantine, patterns) and the
control reader's dispatch by event type."""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

import pytest

from ferryman.codec import IncomingEvent, encode_binary
from ferryman.contracts.mcp import (
    MCP_CANCEL_REQUESTED,
    MCP_CATALOG_UPDATED,
    MCP_TOOL_APPROVED,
    AccessRule,
    CancelRequest,
    CatalogRecord,
    ServerEntry,
    ToolEntry,
)
from ferryman.kafka_config import KafkaConnection
from ferryman_runtime.catalog_view import CatalogView, decode_catalog_record
from ferryman_runtime.control import ControlReader
from ferryman_runtime.topic_follower import FollowedRecord

CONNECTION = KafkaConnection(bootstrap_servers="127.0.0.1:1")
"""Never connected to: these tests feed records directly."""

_offsets = iter(range(1_000_000))


def tool(name: str, state: Literal["available", "quarantined"] = "available") -> ToolEntry:
    return ToolEntry(name=name, definition_hash=f"{len(name):02x}" * 32, state=state)


def catalog_record(
    server: str,
    tools: list[ToolEntry],
    tenants: list[str] | None = None,
    access: dict[str, AccessRule] | None = None,
) -> CatalogRecord:
    return CatalogRecord(
        entry=ServerEntry(server=server, transport="stdio", tools=tools),
        tenants=["*"] if tenants is None else tenants,
        access=access or {},
    )


def published(server: str, record: CatalogRecord | None) -> FollowedRecord:
    """The record as the mcp_worker publishes it: a binary-mode CloudEvent keyed by the
    server, no value for a tombstone."""
    attributes = {"id": "e1", "type": MCP_CATALOG_UPDATED, "source": "/mcp", "subject": server}
    data = b"null" if record is None else record.model_dump_json().encode()
    headers, value = encode_binary(attributes, data)
    return followed(server.encode(), None if record is None else value, headers)


def followed(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None = None
) -> FollowedRecord:
    return FollowedRecord(
        key=key,
        value=value,
        headers=headers or [],
        partition=0,
        offset=next(_offsets),
        timestamp_ms=0,
    )


def view_of(*records: FollowedRecord) -> CatalogView:
    view = CatalogView(CONNECTION, "catalog", client_id="test")
    for record in records:
        view.apply(record)
    return view


def names(tools: list[ToolEntry]) -> list[str]:
    return [t.name for t in tools]


def test_the_view_keeps_the_latest_record_per_server_and_a_tombstone_removes_it() -> None:
    first = catalog_record("time", [tool("now")])
    second = catalog_record("time", [tool("now"), tool("convert")])
    view = view_of(published("time", first), published("files", catalog_record("files", [])))
    assert (view.servers(), view.record("time"), view.version) == (["files", "time"], first, 2)

    view.apply(published("time", second))
    assert (view.record("time"), view.version) == (second, 3)

    view.apply(published("time", None))
    assert (view.servers(), view.record("time"), view.version) == (["files"], None, 4)
    assert view.tools_for(None, "time", ["*"]) == []


def test_the_version_moves_only_on_a_change() -> None:
    record = catalog_record("time", [tool("now")])
    view = view_of(published("time", record))

    view.apply(published("time", record))  # the same record again
    view.apply(published("ghost", None))  # a tombstone for a server never seen
    assert view.version == 1


def test_an_invalid_or_keyless_record_is_ignored_and_the_last_valid_one_stays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = catalog_record("time", [tool("now")])
    view = view_of(published("time", good))

    with caplog.at_level(logging.WARNING):
        view.apply(followed(b"time", b'{"entry": "not an entry"}'))
        view.apply(followed(b"time", b"\xff not json"))
        view.apply(followed(None, good.model_dump_json().encode()))

    assert (view.record("time"), view.version) == (good, 1)
    assert "catalog record of time is not valid" in caplog.text


def test_decoding_reads_the_key_as_the_server_and_no_value_as_a_tombstone() -> None:
    record = catalog_record("time", [tool("now")])

    assert decode_catalog_record(b"time", record.model_dump_json().encode()) == ("time", record)
    assert decode_catalog_record(b"time", None) == ("time", None)
    assert decode_catalog_record(None, None) is None


def test_tools_for_matches_the_patterns_and_leaves_quarantined_tools_out() -> None:
    record = catalog_record(
        "fs",
        [
            tool("read_file"),
            tool("read_dir"),
            tool("write_file"),
            tool("read_secret", "quarantined"),
        ],
    )
    view = view_of(published("fs", record))

    assert names(view.tools_for(None, "fs", ["*"])) == ["read_file", "read_dir", "write_file"]
    assert names(view.tools_for(None, "fs", ["read_*"])) == ["read_file", "read_dir"]
    assert names(view.tools_for(None, "fs", ["write_file", "read_dir"])) == [
        "read_dir",
        "write_file",
    ]
    assert view.tools_for(None, "fs", ["Read_*"]) == []  # case matters, as in the mcp_worker
    assert view.tools_for(None, "fs", ["read_secret"]) == []
    assert view.tools_for(None, "unknown", ["*"]) == []


def test_tools_for_applies_the_servers_tenants() -> None:
    record = catalog_record("crm", [tool("lookup")], tenants=["acme", "team-*"])
    view = view_of(published("crm", record))

    assert names(view.tools_for("acme", "crm", ["*"])) == ["lookup"]
    assert names(view.tools_for("team-red", "crm", ["*"])) == ["lookup"]
    assert view.tools_for("globex", "crm", ["*"]) == []
    assert view.tools_for(None, "crm", ["*"]) == []  # no tenant is the tenant ""


def test_tools_for_applies_the_access_rules_deny_winning() -> None:
    access = {
        "acme": AccessRule(allow=["fs/read_*"]),
        "*": AccessRule(deny=["fs/read_dir"]),
    }
    record = catalog_record(
        "fs", [tool("read_file"), tool("read_dir"), tool("write_file")], access=access
    )
    view = view_of(published("fs", record))

    assert names(view.tools_for("acme", "fs", ["*"])) == ["read_file"]
    assert names(view.tools_for("globex", "fs", ["*"])) == ["read_file", "write_file"]


def control_record(event_type: str, data: Any) -> FollowedRecord:
    attributes = {"id": "c1", "type": event_type, "source": "/ops"}
    headers, value = encode_binary(attributes, json.dumps(data).encode())
    return followed(b"k", value, headers)


def test_the_control_reader_dispatches_by_type_and_skips_what_it_cannot_use(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cancels: list[CancelRequest] = []
    approvals: list[IncomingEvent] = []

    def on_cancel(event: IncomingEvent) -> None:
        cancels.append(CancelRequest.model_validate(event.data))

    reader = ControlReader(
        CONNECTION,
        "control",
        window=60.0,
        handlers={MCP_CANCEL_REQUESTED: on_cancel, MCP_TOOL_APPROVED: approvals.append},
        client_id="test",
    )

    with caplog.at_level(logging.WARNING):
        reader.dispatch(followed(b"k", b"not a cloudevent"))
        reader.dispatch(control_record(MCP_CANCEL_REQUESTED, {"request_id": ""}))
        reader.dispatch(control_record("ferryman.unknown.type", {}))
        reader.dispatch(control_record(MCP_CANCEL_REQUESTED, {"request_id": "r1", "source": "/a"}))

    assert cancels == [CancelRequest(request_id="r1", source="/a")]
    assert approvals == []
    assert reader.seen == 4
    assert "undecodable control event skipped" in caplog.text
    assert f"invalid {MCP_CANCEL_REQUESTED} event skipped" in caplog.text
