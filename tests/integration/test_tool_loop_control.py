"""The tool loop's access control, cancellation and crash safety, through the real Kafka, the
LLM worker, the mcp_worker and the toolbox MCP server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ferryman.client import ChatFailedError
from ferryman.codec import decode_event, header_value
from ferryman.contracts import ChatChunk, ChatCompleted, ToolCallFinished, ToolCallStarted
from tests.integration.conftest import read_topic
from tests.integration.test_mcp_worker_e2e import toolbox_entry, wait_until
from tests.integration.tool_loop_harness import (
    MODEL,
    PROVIDERS,
    ToolLoopStack,
    in_process_worker,
    of_type,
    tool_loop_stack,
    tool_request,
    toolbox_call,
)

pytestmark = pytest.mark.integration


def _offered_functions(stack: ToolLoopStack, provider: str) -> set[str]:
    """The function names the provider's fake was offered, over every request it got."""
    names: set[str] = set()
    for recorded in stack.fakes.server_of(provider).requests:
        body = recorded.body
        for tool in body.get("tools") or []:
            if "function" in tool:
                names.add(tool["function"]["name"])  # OpenAI / Azure
            elif "name" in tool:
                names.add(tool["name"])  # Anthropic
            for declaration in tool.get("functionDeclarations") or []:
                names.add(declaration["name"])  # Gemini
    return names


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_tenant_never_sees_a_tool_it_may_not_use(
    kafka_bootstrap: str, unique: str, tmp_path: Path, provider: str
) -> None:
    async with tool_loop_stack(
        kafka_bootstrap,
        unique,
        tmp_path,
        registry_top={"access": {"acme": {"deny": ["toolbox/destroy"]}}},
    ) as stack:
        stack.fakes.script(provider, MODEL, answer="done")

        completed = await stack.client.chat(
            tool_request(f"{provider}/{MODEL}"), timeout=90, tenant="acme"
        )
        offered = _offered_functions(stack, provider)

    assert completed.content == "done"
    assert "toolbox__echo" in offered
    assert "toolbox__destroy" not in offered


async def test_a_server_hidden_from_the_tenant_fails_the_request_invalid(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    async with tool_loop_stack(
        kafka_bootstrap,
        unique,
        tmp_path,
        servers={"toolbox": toolbox_entry(tenants=["globex"])},
    ) as stack:
        with pytest.raises(ChatFailedError) as failed:
            await stack.client.chat(tool_request("openai/x"), timeout=90, tenant="acme")
        assert stack.fakes.openai.chat_requests() == []

    assert failed.value.error.code == "invalid_request"
    assert "toolbox" in failed.value.error.message


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_cancel_closes_the_provider_stream_mid_answer(
    kafka_bootstrap: str, unique: str, tmp_path: Path, provider: str
) -> None:
    async with tool_loop_stack(kafka_bootstrap, unique, tmp_path) as stack:
        stack.fakes.script(provider, MODEL, tokens=500, token_delay=0.05)
        stream = stack.client.chat_stream(tool_request(f"{provider}/{MODEL}"), timeout=90)
        seen: list[Any] = []

        async def stop_after_chunks(event: Any) -> None:
            seen.append(event)
            if isinstance(event, ChatChunk) and len(seen) == 4:
                await stack.client.cancel(
                    stream.request_id,
                    reason="user pressed stop",
                    control_topic=stack.settings.control_topic,
                )

        with pytest.raises(ChatFailedError) as failed:
            await _consume(stream, stop_after_chunks)
        chunks = len(of_type(seen, ChatChunk))

    assert failed.value.error.code == "cancelled"
    assert "user pressed stop" in failed.value.error.message
    assert chunks < 500  # the stream was cut, not played to its end


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_cancel_mid_tool_call_cancels_the_tool_too(
    kafka_bootstrap: str, unique: str, tmp_path: Path, provider: str
) -> None:
    cancel_log = tmp_path / "cancelled.log"
    async with tool_loop_stack(
        kafka_bootstrap,
        unique,
        tmp_path,
        servers={"toolbox": toolbox_entry(env={"TOOLBOX_CANCEL_LOG": str(cancel_log)})},
    ) as stack:
        stack.fakes.script(provider, MODEL, tool_steps=[[toolbox_call("slow", seconds=60)]])
        stream = stack.client.chat_stream(tool_request(f"{provider}/{MODEL}"), timeout=90)

        async def stop_at_the_tool(event: Any) -> None:
            if isinstance(event, ToolCallStarted):
                # Once the tool runs (a cancel that overtakes the call cancels it unrun).
                await wait_until(lambda: stack.mcp.worker.board.running() >= 1)
                await stack.client.cancel(
                    stream.request_id, control_topic=stack.settings.control_topic
                )

        with pytest.raises(ChatFailedError) as failed:
            await _consume(stream, stop_at_the_tool)
        # The mcp_worker got the tool call's cancel and told the server.
        await wait_until(lambda: cancel_log.exists() and "cancelled slow" in cancel_log.read_text())

    assert failed.value.error.code == "cancelled"


async def test_a_cancel_that_arrives_first_fails_without_a_providertoolbox_call(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    async with tool_loop_stack(kafka_bootstrap, unique, tmp_path) as stack:
        await stack.client.cancel("early-chat", control_topic=stack.settings.control_topic)
        await wait_until(lambda: stack.llm.control.seen >= 1)

        with pytest.raises(ChatFailedError) as failed:
            await stack.client.chat(
                {"model": f"openai/{MODEL}", "messages": [{"role": "user", "content": "hi"}]},
                timeout=60,
                request_id="early-chat",
            )

        assert stack.fakes.openai.chat_requests() == []
    assert failed.value.error.code == "cancelled"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_worker_killed_between_steps_never_runs_a_completed_tool_again(
    kafka_bootstrap: str, unique: str, tmp_path: Path, provider: str
) -> None:
    calls = tmp_path / "calls.log"
    async with tool_loop_stack(
        kafka_bootstrap,
        unique,
        tmp_path,
        servers={"toolbox": toolbox_entry(env={"TOOLBOX_CALL_LOG": str(calls)})},
        start_llm=False,  # a worker process takes the request
    ) as stack:
        # `destroy` is neither read-only nor idempotent. The final answer is slow, so the
        # process is killed after the tool ran and before the model answered.
        stack.fakes.script(
            provider,
            MODEL,
            tool_steps=[[toolbox_call("destroy", target="prod")]],
            echo_tool_results=True,
            first_token_delay=20,
            delays_from_step=1,
        )
        doomed = _worker_process(stack, tmp_path / "doomed.log")
        try:
            stream = stack.client.chat_stream(tool_request(f"{provider}/{MODEL}"), timeout=120)
            events: list[Any] = []
            async for event in stream:
                events.append(event)
                if isinstance(event, ToolCallFinished):
                    doomed.send_signal(signal.SIGKILL)
                    break
            doomed.wait(timeout=10)
            stack.fakes.script(
                provider,
                MODEL,
                tool_steps=[[toolbox_call("destroy", target="prod")]],
                echo_tool_results=True,
            )
            survivor = in_process_worker(stack.settings)
            await survivor.worker.start()
            try:
                completed = await _rerun_result(stack, stream.request_id)
            finally:
                await survivor.worker.stop()
        finally:
            if doomed.poll() is None:
                doomed.kill()

    assert calls.read_text().splitlines() == ["destroy prod"]  # executed once
    assert completed.content == "tool results: destroyed prod"
    first = (completed.steps or [])[0]
    assert first.replayed
    assert first.tool_results[0].replayed


async def _consume(stream: Any, on_event: Any) -> None:
    async for event in stream:
        await on_event(event)


async def _rerun_result(stack: ToolLoopStack, request_id: str) -> ChatCompleted:
    """The completed event of the request's rerun, read from the reply topic."""

    def done(records: list[Any]) -> bool:
        return any(
            header_value(r.headers, "ce_correlationid") == request_id
            and header_value(r.headers, "ce_type") == "ferryman.llm.chat.completed"
            for r in records
        )

    records = await read_topic(
        stack.mcp.bootstrap, stack.settings.default_reply_topic, until=done, timeout=120
    )
    for record in records:
        event = decode_event(list(record.headers), record.value)
        if (
            event.type == "ferryman.llm.chat.completed"
            and header_value(record.headers, "ce_correlationid") == request_id
        ):
            return ChatCompleted.model_validate(event.data)
    raise AssertionError("no completed event")


def _worker_process(stack: ToolLoopStack, log: Path) -> subprocess.Popen[bytes]:
    settings = stack.settings
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "LLM_WORKER_REQUEST_TOPIC": settings.request_topic,
        "LLM_WORKER_DEFAULT_REPLY_TOPIC": settings.default_reply_topic,
        "LLM_WORKER_HEALTH_TOPIC": settings.health_topic,
        "LLM_WORKER_GROUP_ID": settings.group_id,
        "LLM_WORKER_INSTANCE_ID": "doomed",
        "LLM_WORKER_HTTP_PORT": "0",
        "LLM_WORKER_CONTROL_TOPIC": settings.control_topic,
        "LLM_WORKER_CATALOG_TOPIC": settings.catalog_topic,
        "LLM_WORKER_MCP_REQUEST_TOPIC": settings.mcp_request_topic,
        "LLM_WORKER_TOOL_LOOP_TOPIC": settings.tool_loop_topic,
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": stack.fakes.openai.base_url,
        "AZURE_OPENAI_API_KEY": "az-test",
        "AZURE_OPENAI_ENDPOINT": f"http://127.0.0.1:{stack.fakes.openai.port}",
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "LLM_WORKER_ANTHROPIC__BASE_URL": stack.fakes.anthropic.base_url,
        "GEMINI_API_KEY": "g-test",
        "LLM_WORKER_GEMINI__BASE_URL": stack.fakes.gemini.base_url,
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "llm_worker"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def test_a_lazy_server_is_listed_on_first_use_and_its_tools_offered(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    async with tool_loop_stack(
        kafka_bootstrap, unique, tmp_path, servers={"toolbox": toolbox_entry(start="lazy")}
    ) as stack:
        record = stack.llm.catalog.record("toolbox")
        assert record is not None
        assert record.entry.tools == []  # not started, so never listed
        stack.fakes.script(
            "openai",
            MODEL,
            tool_steps=[[toolbox_call("echo", text="lazy")]],
            echo_tool_results=True,
        )

        completed = await stack.client.chat(tool_request(f"openai/{MODEL}"), timeout=90)

    assert completed.content == "tool results: lazy"


async def test_a_worker_stopping_mid_tool_leaves_the_call_running_for_the_rerun(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    cancel_log = tmp_path / "cancelled.log"
    async with tool_loop_stack(
        kafka_bootstrap,
        unique,
        tmp_path,
        servers={"toolbox": toolbox_entry(env={"TOOLBOX_CANCEL_LOG": str(cancel_log)})},
        start_llm=False,
        grace_period=0.2,
    ) as stack:
        stack.fakes.script(
            "openai", MODEL, tool_steps=[[toolbox_call("slow", seconds=3)]], echo_tool_results=True
        )
        first = in_process_worker(stack.settings)
        await first.worker.start()
        stream = stack.client.chat_stream(tool_request(f"openai/{MODEL}"), timeout=120)
        events: list[Any] = []

        async def stop_the_worker_at_the_tool(event: Any) -> None:
            events.append(event)
            if isinstance(event, ToolCallStarted):
                await wait_until(lambda: stack.mcp.worker.board.running() >= 1)
                await first.worker.stop()  # a rolling deploy: the loop is cut mid-tool
                raise _Stopped

        with pytest.raises(_Stopped):
            await _consume(stream, stop_the_worker_at_the_tool)
        survivor = in_process_worker(stack.settings)
        await survivor.worker.start()
        try:
            completed = await _rerun_result(stack, stream.request_id)
        finally:
            await survivor.worker.stop()

    assert completed.content == "tool results: done"
    assert not cancel_log.exists()  # the stop cancelled no tool call
    assert (completed.steps or [])[0].replayed


class _Stopped(Exception):
    """Ends reading a stream on purpose."""


async def test_failover_works_inside_the_loop_across_providers(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        "deployments:\n"
        "  flaky: {provider: openai, model: flaky}\n"
        "  steady: {provider: anthropic, model: loop-model}\n"
        "routes:\n"
        "  chat: {deployments: [flaky], fallbacks: [spare]}\n"
        "  spare: {deployments: [steady]}\n"
    )
    async with tool_loop_stack(kafka_bootstrap, unique, tmp_path, routing_file=routing) as stack:
        stack.fakes.script("openai", "flaky", status=503)
        stack.fakes.script(
            "anthropic", MODEL, tool_steps=[[toolbox_call("echo", text="failed over")]],
            echo_tool_results=True,
        )  # fmt: skip

        completed = await stack.client.chat(tool_request("chat"), timeout=90)

    assert completed.content == "tool results: failed over"
    assert [s.deployment for s in completed.steps or []] == ["steady", "steady"]
    outcomes = [(a.deployment, a.outcome) for a in completed.attempts or []]
    assert ("flaky", "failed") in outcomes
    assert outcomes.count(("steady", "completed")) == 2
