"""Deployments with their own endpoint and credentials get their own client; references are
resolved without ever exposing the key; per-deployment capabilities route around."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ferryman.codec import header_value
from ferryman.contracts import ChatRequest
from llm_worker.chat.service import ChatJob, ChatService, LlmMetrics
from llm_worker.chat.streaming import fold
from llm_worker.providers.config import OpenAIConfig
from llm_worker.providers.factory import (
    PROBE_CONNECTIONS,
    build_providers,
    dedicated_client,
    openai_client,
    pool_size,
    read_credentials,
)
from llm_worker.providers.resolver import ModelResolver
from llm_worker.routing.config import Deployment, RoutingConfig
from llm_worker.routing.table import build_table
from llm_worker.settings import LlmWorkerSettings
from tests.fakes.openai_server import FakeOpenAI, Scenario
from tests.fakes.publisher import RawPublisher, chat_replies


def _last_reply(publisher: RawPublisher) -> dict[str, Any]:
    value = publisher.sent[-1][2]
    assert value is not None
    return json.loads(value)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


def test_credentials_references_resolve_from_env_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EU_KEY", "sk-eu-secret")
    key_file = tmp_path / "key"
    key_file.write_text("sk-file-secret\n")

    assert read_credentials("env:EU_KEY").get_secret_value() == "sk-eu-secret"
    assert read_credentials(f"file:{key_file}").get_secret_value() == "sk-file-secret"
    with pytest.raises(ValueError, match="MISSING_KEY is not set"):
        read_credentials("env:MISSING_KEY")
    with pytest.raises(ValueError, match="cannot read credentials file"):
        read_credentials(f"file:{tmp_path / 'nope'}")


def test_a_routing_file_naming_an_unset_credentials_variable_is_rejected_without_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    settings = LlmWorkerSettings(_env_file=None)  # type: ignore[call-arg]
    config = RoutingConfig.parse(
        b"deployments: {eu: {provider: openai, model: m, credentials: 'env:NOT_SET_KEY'}}"
    )
    resolver = ModelResolver(build_providers(settings), {})

    with pytest.raises(ValueError, match="deployment 'eu': credentials variable NOT_SET_KEY"):
        build_table(config, resolver, lambda d: dedicated_client(settings, d))


async def test_a_deployment_with_its_own_endpoint_and_key_is_called_there_with_that_key(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EU_KEY", "sk-eu-secret")
    settings = LlmWorkerSettings(_env_file=None, OPENAI_API_KEY="sk-main")  # type: ignore[call-arg]
    routing = (
        f"deployments:\n"
        f"  eu: {{provider: openai, model: gpt-eu, endpoint: '{fake.base_url}',"
        f" credentials: 'env:EU_KEY'}}\n"
        f"routes:\n  chat: {{deployments: [eu]}}\n"
    ).encode()
    resolver = ModelResolver(build_providers(settings), {})
    table = build_table(
        RoutingConfig.parse(routing), resolver, lambda d: dedicated_client(settings, d)
    )
    service = ChatService(resolver, LlmMetrics(CollectorRegistry()))
    service.apply_routing(table)
    publisher = RawPublisher()
    request = ChatRequest.model_validate(
        {"model": "chat", "messages": [{"role": "user", "content": "hi there"}]}
    )
    replies = chat_replies(publisher)

    await service.execute(ChatJob(request=request, replies=replies))

    (call,) = fake.chat_requests()
    assert call.headers["Authorization"] == "Bearer sk-eu-secret"
    assert call.body["model"] == "gpt-eu"
    assert table.clients["eu"] is not resolver.providers["openai"]
    assert table.owned_clients == (table.clients["eu"],)
    completed = _last_reply(publisher)
    assert header_value(publisher.sent[-1][3], "ce_type") == "ferryman.llm.chat.completed"
    assert completed["deployment"] == "eu"
    assert "sk-eu-secret" not in repr(table.config)
    for client in table.owned_clients:
        await client.aclose()
    await resolver.aclose()


async def test_per_deployment_capabilities_route_a_request_around_a_deployment() -> None:
    routing = (
        b"deployments:\n"
        b"  plain: {provider: mock, model: echo, capabilities: {tools: false}}\n"
        b"  tooled: {provider: mock, model: echo, capabilities: {tools: true}}\n"
        b"routes:\n  chat: {deployments: [plain], fallbacks: [more]}\n"
        b"  more: {deployments: [tooled]}\n"
    )
    settings = LlmWorkerSettings(_env_file=None)  # type: ignore[call-arg]
    resolver = ModelResolver(build_providers(settings), {})
    service = ChatService(resolver, LlmMetrics(CollectorRegistry()))
    service.apply_routing(build_table(RoutingConfig.parse(routing), resolver, lambda _: None))
    publisher = RawPublisher()
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    request = ChatRequest.model_validate(
        {"model": "chat", "messages": [{"role": "user", "content": "x"}], "tools": [tool]}
    )
    replies = chat_replies(publisher)

    await service.execute(ChatJob(request=request, replies=replies))

    completed = _last_reply(publisher)
    assert completed["deployment"] == "tooled"
    assert [a["deployment"] for a in completed["attempts"]] == ["tooled"]


def test_mock_deployments_take_no_endpoint() -> None:
    settings = LlmWorkerSettings(_env_file=None)  # type: ignore[call-arg]

    with pytest.raises(ValueError, match="takes no endpoint"):
        dedicated_client(settings, Deployment(provider="mock", model="echo", endpoint="http://x"))


def test_a_provider_pool_holds_every_call_in_flight_plus_probes_unless_capped() -> None:
    settings = LlmWorkerSettings(_env_file=None, max_in_flight=3000)  # type: ignore[call-arg]

    assert pool_size(settings.openai, settings.max_in_flight) == 3000 + PROBE_CONNECTIONS
    capped = settings.gemini.model_copy(update={"max_connections": 64})
    assert pool_size(capped, settings.max_in_flight) == 64


async def test_the_configured_pool_caps_the_connections_a_provider_client_opens(
    fake: FakeOpenAI,
) -> None:
    # Three overlapping streams through a pool of two: the third waits for a connection
    # and reuses it, so the server never sees a third one.
    fake.default = Scenario(answer="a b", first_token_delay=0.2)
    config = OpenAIConfig(base_url=fake.base_url, max_connections=2)
    client = openai_client(config, max_in_flight=100)
    request = ChatRequest.model_validate(
        {"model": "openai/m", "messages": [{"role": "user", "content": "hi"}]}
    )

    completions = await asyncio.gather(*(fold(client.stream(request, "m")) for _ in range(3)))
    await client.aclose()

    assert [c.content for c in completions] == ["a b"] * 3
    assert len(fake.chat_requests()) == 3
    assert fake.connections == 2
