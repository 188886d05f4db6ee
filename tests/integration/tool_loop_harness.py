"""The tool loop's whole stack in the test process: an mcp_worker on the toolbox MCP server,
an LLM worker whose providers are the fake servers, and a client, all on the real Kafka with
topics unique to the test."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from ferryman.client import FerrymanClient
from ferryman.topics import ensure_topics
from llm_worker.app import LlmWorker
from llm_worker.providers.config import (
    AnthropicConfig,
    AzureOpenAIConfig,
    GeminiConfig,
    OpenAIConfig,
)
from llm_worker.providers.factory import build_providers
from llm_worker.settings import LlmWorkerSettings
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.gemini_server import FakeGemini
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.mcp_harness import McpHarness, running_mcp_worker
from tests.integration.test_mcp_worker_e2e import toolbox_entry, wait_until, write_registry

PROVIDERS = ("openai", "azure", "anthropic", "gemini")
"""Every provider, with the model a test asks for (`<provider>/<model>`)."""

MODEL = "loop-model"
"""The model the tests script on each provider's fake."""


def toolbox_call(name: str, **arguments: Any) -> dict[str, str]:
    """A scripted call of the toolbox's tool `name` (as a fake model makes it)."""
    return {"name": f"toolbox__{name}", "arguments": json.dumps(arguments)}


def in_process_worker(settings: LlmWorkerSettings) -> LlmWorker:
    """An LLM worker on `settings` (not started), with its own metrics registry."""
    return LlmWorker(settings, providers=build_providers(settings), registry=CollectorRegistry())


@dataclass
class Fakes:
    """The fake provider servers (Azure OpenAI is served by the OpenAI fake)."""

    openai: FakeOpenAI
    anthropic: FakeAnthropic
    gemini: FakeGemini

    def server_of(self, provider: str) -> Any:
        """The fake serving `provider`."""
        return {"openai": self.openai, "azure": self.openai}.get(provider) or getattr(
            self, provider
        )

    def script(self, provider: str, model: str, **scenario: Any) -> None:
        """Register a scenario for `model` on `provider`'s fake."""
        server = self.server_of(provider)
        module = type(server).__module__
        scenario_type = __import__(module, fromlist=["Scenario"]).Scenario
        server.scenarios[model] = scenario_type(**scenario)


@dataclass
class ToolLoopStack:
    """The running stack."""

    mcp: McpHarness
    llm: LlmWorker
    settings: LlmWorkerSettings
    client: FerrymanClient
    fakes: Fakes
    metrics: CollectorRegistry

    def model(self, provider: str, model: str) -> str:
        """The request's `model` for `model` on `provider` (Azure: a deployment alias)."""
        return f"{provider}/{model}"


def llm_settings(
    bootstrap: str, unique: str, mcp: McpHarness, fakes: Fakes, **overrides: Any
) -> LlmWorkerSettings:
    """The LLM worker's settings: this test's topics, the mcp_worker's, and the fakes."""
    prefix = f"t-{unique}"
    return LlmWorkerSettings(
        kafka_bootstrap_servers=bootstrap,
        request_topic=f"{prefix}.llm.requests",
        default_reply_topic=f"{prefix}.llm.results",
        health_topic=f"{prefix}.llm.health",
        group_id=f"g-llm-{unique}",
        instance_id=f"llm-{unique}",
        topic_partitions=2,
        control_topic=mcp.settings.control_topic,
        catalog_topic=mcp.settings.catalog_topic,
        mcp_request_topic=mcp.settings.request_topic,
        tool_loop_topic=f"{prefix}.llm.tool-loop.results",
        openai=OpenAIConfig.model_validate(
            {"api_key": "sk-test", "base_url": fakes.openai.base_url}
        ),
        azure=AzureOpenAIConfig.model_validate(
            {"api_key": "az-test", "endpoint": f"http://127.0.0.1:{fakes.openai.port}"}
        ),
        anthropic=AnthropicConfig.model_validate(
            {"api_key": "sk-ant-test", "base_url": fakes.anthropic.base_url}
        ),
        gemini=GeminiConfig.model_validate(
            {"api_key": "g-test", "base_url": fakes.gemini.base_url}
        ),
        **overrides,
    )


@asynccontextmanager
async def tool_loop_stack(
    bootstrap: str,
    unique: str,
    tmp_path: Path,
    *,
    servers: dict[str, Any] | None = None,
    mcp_overrides: dict[str, Any] | None = None,
    registry_top: dict[str, Any] | None = None,
    start_llm: bool = True,
    **llm_overrides: Any,
) -> AsyncIterator[ToolLoopStack]:
    """Start the stack; the LLM worker is ready once it sees every server in the catalog
    (`start_llm` False: the worker is built, not started; the catalog is still awaited)."""
    servers = servers or {"toolbox": toolbox_entry()}
    # Tools reach the catalog when a server starts: the ones a model is offered start eagerly.
    servers = {name: {"start": "eager", **entry} for name, entry in servers.items()}
    registry_file = write_registry(tmp_path / "servers.json", servers, **(registry_top or {}))
    async with AsyncExitStack() as stack:
        fakes = Fakes(FakeOpenAI(), FakeAnthropic(), FakeGemini())
        for fake in (fakes.openai, fakes.anthropic, fakes.gemini):
            await fake.start()
            stack.push_async_callback(fake.stop)
        mcp = await stack.enter_async_context(
            running_mcp_worker(bootstrap, unique, registry_file, **(mcp_overrides or {}))
        )
        settings = llm_settings(bootstrap, unique, mcp, fakes, **llm_overrides)
        llm = in_process_worker(settings)
        metrics = llm.worker.registry
        await ensure_topics(
            bootstrap,
            [settings.request_topic, settings.default_reply_topic],
            partitions=2,
            replication_factor=1,
        )
        if start_llm:
            await llm.worker.start()
            stack.push_async_callback(llm.worker.stop)
            await wait_until(lambda: _discovered(llm, servers), timeout=60)
            await wait_until(lambda: llm.control.ready.is_set() and llm.journal.ready.is_set())
        else:
            await mcp.topic(
                mcp.settings.catalog_topic,
                until=lambda records: (
                    len({r.key for r in records if b'"tools":[{' in r.value}) >= len(servers)
                ),
            )
        client = await stack.enter_async_context(
            FerrymanClient(
                bootstrap,
                request_topic=settings.request_topic,
                reply_topic=settings.default_reply_topic,
                source=f"/test/{unique}",
            )
        )
        yield ToolLoopStack(mcp, llm, settings, client, fakes, metrics)


def _discovered(llm: LlmWorker, servers: dict[str, Any]) -> bool:
    """Every server is in the catalog, with its tools unless it starts lazily."""
    for name, entry in servers.items():
        record = llm.catalog.record(name)
        if record is None or (entry["start"] == "eager" and not record.entry.tools):
            return False
    return True


def tool_request(
    model: str,
    *,
    servers: list[str] | None = None,
    functions: list[dict[str, Any]] | None = None,
    **execution: Any,
) -> dict[str, Any]:
    """A chat request offering MCP servers' tools (and plain functions), run by the worker."""
    tools: list[dict[str, Any]] = [
        {"type": "mcp", "server": server} for server in (servers or ["toolbox"])
    ]
    for function in functions or []:
        tools.append({"type": "function", "function": function})
    return {
        "model": model,
        "messages": [{"role": "user", "content": "use the tools"}],
        "tools": tools,
        "tool_execution": {"mode": "auto", **execution},
    }


def of_type(events: list[Any], kind: type) -> list[Any]:
    """The events of one type, in order."""
    return [event for event in events if isinstance(event, kind)]


Predicate = Callable[[], bool]
