"""The tool loop's parts without Kafka: what the model is offered, how results read, the
journal's index and its bounds, and the ids a rerun finds again."""

from __future__ import annotations

import asyncio
import fnmatch
import json
from collections.abc import Sequence
from typing import Any

import pytest

from ferryman.codec import encode_binary
from ferryman.contracts import ChatRequest, FerrymanError
from ferryman.contracts.llm import CompletedToolCall, Usage
from ferryman.contracts.mcp import (
    MCP_FAILED,
    MCP_TOOL_CALL_COMPLETED,
    CatalogRecord,
    ToolAnnotations,
    ToolCallCompleted,
    ToolEntry,
)
from ferryman.kafka_config import KafkaConnection
from ferryman_runtime.topic_follower import FollowedRecord
from llm_worker.tool_loop.dispatch import request_digest, tool_request_id
from llm_worker.tool_loop.journal import LOOP_STEP_RECORDED, LoopJournal, LoopStep
from llm_worker.tool_loop.offer import ToolOffer, function_name
from llm_worker.tool_loop.tool_runs import result_text

HASH = "0" * 64


class FakeCatalog:
    """Tools by server, visible to the tenants listed (None: everyone)."""

    def __init__(self, tools: dict[str, list[ToolEntry]], tenants: list[str] | None = None):
        self.tools = tools
        self.tenants = tenants
        self.ready = asyncio.Event()

    def record(self, server: str) -> CatalogRecord | None:
        return None

    async def sync(self, timeout: float) -> None:
        return None

    def tools_for(
        self, tenant: str | None, server: str, patterns: Sequence[str]
    ) -> list[ToolEntry]:
        if self.tenants is not None and tenant not in self.tenants:
            return []
        return [
            t
            for t in self.tools.get(server, [])
            if any(fnmatch.fnmatchcase(t.name, p) for p in patterns)
        ]


def _entry(name: str, **hints: Any) -> ToolEntry:
    return ToolEntry(
        name=name,
        description=f"the {name} tool",
        input_schema={"type": "object", "properties": {"x": {"type": "string"}}},
        annotations=ToolAnnotations(**hints),
        definition_hash=HASH,
    )


def _request_data() -> dict[str, Any]:
    return {
        "model": "openai/x",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "mcp", "server": "box"}],
        "tool_execution": {"mode": "auto"},
    }


def _request(tools: list[dict[str, Any]], **execution: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {
            "model": "openai/x",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": tools,
            "tool_execution": {"mode": "auto", **execution},
        }
    )


def test_function_names_are_safe_for_every_provider_and_stay_unique_when_long() -> None:
    assert function_name("time", "get_current_time") == "time__get_current_time"
    assert function_name("files.v2", "read.file") == "files_v2__read_file"
    long_a = function_name("s" * 60, "tool_a")
    long_b = function_name("s" * 60, "tool_b")
    assert len(long_a) == 64
    assert long_a != long_b


def test_the_offer_turns_catalog_tools_into_functions_and_knows_what_runs() -> None:
    catalog = FakeCatalog({"box": [_entry("echo", read_only=True), _entry("destroy")]})
    request = _request(
        [{"type": "mcp", "server": "box"}, {"type": "function", "function": {"name": "ask"}}],
        auto_approve=["box/echo"],
    )

    offer = ToolOffer(request, "acme", catalog)
    provider_request = offer.provider_request(request)

    names = [tool.function.name for tool in provider_request.function_tools()]
    assert names == ["ask", "box__echo", "box__destroy"]
    assert provider_request.tool_execution is None
    assert provider_request.mcp_toolsets() == []
    echo = offer.runnable("box__echo")
    assert echo is not None
    assert (echo.server, echo.tool, echo.idempotent) == ("box", "echo", True)
    assert offer.runnable("box__destroy") is None  # needs the producer's confirmation
    assert offer.runnable("ask") is None  # a plain function goes back to the producer


def test_a_server_hidden_from_the_tenant_is_refused_like_an_unknown_one() -> None:
    catalog = FakeCatalog({"box": [_entry("echo")]}, tenants=["globex"])
    request = _request([{"type": "mcp", "server": "box"}])

    with pytest.raises(FerrymanError) as hidden:
        ToolOffer(request, "acme", catalog)
    with pytest.raises(FerrymanError) as unknown:
        ToolOffer(_request([{"type": "mcp", "server": "nowhere"}]), "globex", catalog)

    assert hidden.value.code == unknown.value.code == "invalid_request"
    assert hidden.value.message.replace("box", "S") == unknown.value.message.replace("nowhere", "S")


def test_a_named_tool_choice_must_name_an_offered_function() -> None:
    catalog = FakeCatalog({"box": [_entry("echo")]})
    named = {"type": "function", "function": {"name": "box__echo"}}
    wrong = {"type": "function", "function": {"name": "box__nope"}}
    good = ChatRequest.model_validate({**_request_data(), "tool_choice": named})
    bad = ChatRequest.model_validate({**_request_data(), "tool_choice": wrong})

    assert ToolOffer(good, None, catalog).provider_request(good).tool_choice == good.tool_choice
    with pytest.raises(FerrymanError, match="box__nope"):
        ToolOffer(bad, None, catalog).provider_request(bad)


def test_a_function_name_taken_twice_is_refused() -> None:
    catalog = FakeCatalog({"box": [_entry("echo")]})
    request = _request(
        [{"type": "mcp", "server": "box"}, {"type": "function", "function": {"name": "box__echo"}}]
    )

    with pytest.raises(FerrymanError, match="box__echo"):
        ToolOffer(request, None, catalog)


def test_requests_that_cannot_loop_are_invalid() -> None:
    with pytest.raises(ValueError, match="needs MCP tools"):
        _request([{"type": "function", "function": {"name": "f"}}])
    with pytest.raises(ValueError, match="once"):
        _request([{"type": "mcp", "server": "a"}, {"type": "mcp", "server": "a"}])
    with pytest.raises(ValueError, match="max_steps"):
        _request([{"type": "mcp", "server": "a"}], max_steps=0)


def test_results_read_as_text_for_the_model() -> None:
    def completed(**fields: Any) -> ToolCallCompleted:
        return ToolCallCompleted(
            server="s", tool="t", protocol_version="2025-11-25", definition_hash=HASH,
            duration_ms=1, **fields,
        )  # fmt: skip

    image = {"type": "image", "data": "AAAA", "mimeType": "image/png"}
    assert result_text(completed(content=[{"type": "text", "text": "a"}, image])) == (
        'a\n{"type":"image","data":"AAAA","mimeType":"image/png"}'
    )
    assert result_text(completed(content=[], structured_content={"n": 1})) == '{"n":1}'
    assert result_text(completed(content=[{"type": "text", "text": "x"}], truncated=True)) == (
        "x\n[cut by the tool worker's output limit]"
    )


def test_tool_request_ids_are_the_same_for_a_rerun_and_differ_by_call() -> None:
    call = CompletedToolCall(id="c1", name="box__echo", arguments='{"text": "a"}')
    other = CompletedToolCall(id="c1", name="box__echo", arguments='{"text": "b"}')

    def ident(source: str = "/app", step: int = 0, index: int = 0, **kw: Any) -> str:
        return tool_request_id(
            source, "chat-1", step, index, digest=kw.get("digest", "d"), call=kw.get("c", call)
        )

    first = ident()
    assert first == ident()
    others = {
        ident(index=1),
        ident(step=1),
        ident(source="/other"),
        ident(digest="another request under the same id"),
        ident(c=other),  # the model asked again and called differently
    }
    assert first not in others
    assert len(others) == 5


def test_a_request_digest_tells_two_requests_apart() -> None:
    one = _request([{"type": "mcp", "server": "box"}])
    two = _request([{"type": "mcp", "server": "box"}], max_steps=3)

    assert request_digest(one) == request_digest(ChatRequest.model_validate(one.model_dump()))
    assert request_digest(one) != request_digest(two)


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _journal(clock: _Clock, memory: int = 1 << 20, window: float = 60.0) -> LoopJournal:
    return LoopJournal(
        KafkaConnection.coerce("127.0.0.1:1"),
        "loop",
        lambda: None,  # type: ignore[arg-type,return-value]  # never publishes here
        source="/llm",
        window=window,
        memory=memory,
        client_id="test",
        clock=clock,
    )


def _record(
    clock: _Clock,
    event_type: str,
    data: dict[str, Any],
    correlation: str | None = None,
    **kw: str,
) -> FollowedRecord:
    source = (
        "/ferryman/llm-worker/a" if event_type == LOOP_STEP_RECORDED else "/ferryman/mcp-worker/b"
    )
    attributes: dict[str, Any] = {"id": "e", "type": event_type, "source": kw.get("source", source)}
    if correlation is not None:
        attributes["correlationid"] = correlation
    headers, value = encode_binary(attributes, json.dumps(data).encode())
    return FollowedRecord(
        key=None, value=value, headers=headers, partition=0, offset=0,
        timestamp_ms=int(clock.now * 1000),
    )  # fmt: skip


def _step(request_id: str, step: int = 0) -> LoopStep:
    return LoopStep(
        source="/app",
        request_id=request_id,
        request_digest="d",
        step=step,
        content="",
        tool_calls=[CompletedToolCall(id="c", name="box__echo", arguments="{}")],
        finish_reason="tool_calls",
        usage=Usage(input_tokens=1, output_tokens=1),
        dispatched=[],
    )


def _completed_data() -> dict[str, Any]:
    return {
        "server": "box", "tool": "echo", "content": [{"type": "text", "text": "ok"}],
        "protocol_version": "2025-11-25", "definition_hash": HASH, "duration_ms": 1,
    }  # fmt: skip


async def test_the_journal_indexes_steps_and_results_and_wakes_waiters() -> None:
    clock = _Clock()
    journal = _journal(clock)
    waiting = asyncio.create_task(journal.wait_result("tool-1", timeout=5))
    await asyncio.sleep(0)  # the waiter registers

    journal.apply(_record(clock, LOOP_STEP_RECORDED, _step("chat-1").model_dump(mode="json")))
    journal.apply(_record(clock, MCP_TOOL_CALL_COMPLETED, _completed_data(), "tool-1"))
    journal.apply(
        _record(
            clock,
            MCP_FAILED,
            {"error": {"code": "timeout", "message": "late", "retryable": True}},
            "tool-1",
        )
    )  # a rerun's reply: the first outcome stands
    journal.apply(_record(clock, MCP_FAILED, {"error": {"code": "x"}}, "tool-2"))  # invalid
    journal.apply(FollowedRecord(None, b"\xff", [], 0, 1, int(clock.now * 1000)))  # garbage
    forged = _record(clock, MCP_TOOL_CALL_COMPLETED, _completed_data(), "tool-4", source="/evil")
    journal.apply(forged)  # only the mcp_worker answers tool calls
    journal.apply(
        _record(clock, LOOP_STEP_RECORDED, _step("chat-9").model_dump(mode="json"), source="/evil")
    )  # only a worker records steps

    outcome = await waiting
    assert outcome is not None
    assert outcome.completed is not None
    assert outcome.completed.content == [{"type": "text", "text": "ok"}]
    assert journal.result("tool-1") == outcome
    assert journal.result("tool-2") is None
    assert journal.result("tool-4") is None
    assert journal.steps("/app", "chat-9") == {}
    assert list(journal.steps("/app", "chat-1")) == [0]
    assert await journal.wait_result("tool-3", timeout=0.01) is None


def test_the_journal_forgets_the_oldest_past_its_memory_and_its_window() -> None:
    clock = _Clock()
    journal = _journal(clock, memory=1 << 20, window=60.0)
    for n in range(3):
        journal.apply(
            _record(clock, LOOP_STEP_RECORDED, _step(f"chat-{n}").model_dump(mode="json"))
        )
    size = journal.held_bytes() // 3

    small = _journal(clock, memory=2 * size + size // 2)
    for n in range(3):
        small.apply(_record(clock, LOOP_STEP_RECORDED, _step(f"chat-{n}").model_dump(mode="json")))
    assert [bool(small.steps("/app", f"chat-{n}")) for n in range(3)] == [False, True, True]

    old = _record(clock, LOOP_STEP_RECORDED, _step("old").model_dump(mode="json"))
    clock.now += 61
    journal.apply(old)  # older than the window: not indexed
    journal.apply(_record(clock, LOOP_STEP_RECORDED, _step("new").model_dump(mode="json")))
    assert not journal.steps("/app", "old")
    assert journal.steps("/app", "new")
    assert not journal.steps("/app", "chat-0")  # aged out when something newer came
