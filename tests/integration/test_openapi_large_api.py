"""A sizeable real API through the mcp_worker end to end, on the real Kafka: Discord's OpenAPI
document (tests/fakes/openapi/real/, 242 operations) registered whole, its base URL pointing
at a local stand-in (tests/fakes/discord_api.py), its `BotToken` from an env reference.

The server's catalog record is about 2.9 MB of JSON (every tool with its schemas), beyond
Kafka's default 1 MB: it travels gzip-compressed to a topic created to accept it, the LLM
tool loop's catalog view reads it, and a catalog listing too large for its reply topic fails
`too_large` saying how to ask for less.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ferryman.codec import IncomingEvent, decode_event
from ferryman.contracts.mcp import MCP_CATALOG_LIST_REQUESTED, MCP_CATALOG_UPDATED
from ferryman.kafka_config import KafkaConnection
from ferryman.topics import ensure_topics
from ferryman_runtime.catalog_view import CatalogView
from tests.fakes.discord_api import BOT_USER, DiscordApi
from tests.integration.conftest import read_topic
from tests.integration.mcp_harness import McpHarness, running_mcp_worker
from tests.integration.mcp_topics import read_all, record_bytes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DISCORD_DOCUMENT = (
    Path(__file__).resolve().parents[1] / "fakes" / "openapi" / "real" / "discord-openapi.json"
)
TOKEN = "discord-bot-token-7f3a9c"
SECRETS = {"DISCORD_BOT_TOKEN": f"Bot {TOKEN}"}
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
"""The broker's default `message.max.bytes`: what a topic created without a limit accepts."""
STARTUP_TIMEOUT = 120.0
"""Seconds for the worker to load the document and publish its record (2 shared cores)."""
CHANNEL = "1300000000000000042"


def operation_ids() -> set[str]:
    """Every operationId of the document, read straight from its JSON."""
    document = json.loads(DISCORD_DOCUMENT.read_bytes())
    return {
        operation["operationId"]
        for item in document["paths"].values()
        for method, operation in item.items()
        if method in ("get", "put", "post", "delete", "patch", "head", "options", "trace")
    }


@dataclass
class Running:
    """The worker serving Discord, the fake behind it, and when the worker was started."""

    harness: McpHarness
    discord: DiscordApi
    started: float
    """Wall-clock seconds (Kafka's record timestamps are wall-clock too)."""


async def create_topic(bootstrap: str, topic: str, max_message_bytes: int) -> None:
    """Create `topic` before the worker does, with an explicit `max.message.bytes`."""
    await ensure_topics(
        bootstrap,
        [topic],
        partitions=2,
        replication_factor=1,
        configs={topic: {"max.message.bytes": str(max_message_bytes)}},
    )


@contextlib.asynccontextmanager
async def serving_discord(
    bootstrap: str,
    directory: Path,
    unique: str,
    before_start: Callable[[str], Awaitable[None]] | None = None,
) -> AsyncIterator[Running]:
    """An mcp_worker with Discord registered (`before_start(prefix)` may create its topics
    first; they are named `t-<unique>.*`)."""
    discord = DiscordApi(token=TOKEN)
    await discord.start()
    registry = directory / "servers.json"
    entry = {
        "type": "openapi",
        "spec": str(DISCORD_DOCUMENT),
        "base_url": discord.base_url,
        "credentials": {"BotToken": {"value": "env:DISCORD_BOT_TOKEN"}},
        "output_validation": "strict",  # the fake's bodies must match the document
    }
    registry.write_text(json.dumps({"mcpServers": {"discord": entry}}))
    if before_start is not None:
        await before_start(f"t-{unique}")
    started = time.time()
    try:
        async with running_mcp_worker(bootstrap, unique, registry, environ=SECRETS) as harness:
            yield Running(harness, discord, started)
    finally:
        await discord.stop()


@pytest.fixture(scope="module")
async def running(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Running]:
    """One worker for the module (loading the document takes seconds); its reply topic
    created with the broker's default limit, so a listing with every schema is too large."""
    unique = uuid.uuid4().hex[:10]

    async def reply_topic_with_default_limit(prefix: str) -> None:
        await create_topic(
            kafka_bootstrap, f"{prefix}.mcp.results", KAFKA_DEFAULT_MAX_MESSAGE_BYTES
        )

    async with serving_discord(
        kafka_bootstrap, tmp_path_factory.mktemp("discord"), unique, reply_topic_with_default_limit
    ) as serving:
        yield serving


async def discord_record(harness: McpHarness) -> tuple[Any, IncomingEvent]:
    """The first catalog topic record of `discord` (waits for it) and its event."""
    found: list[tuple[Any, IncomingEvent]] = []

    def published(records: list[Any]) -> bool:
        found[:] = [
            (r, decode_event(list(r.headers), r.value))
            for r in records
            if r.key == b"discord" and r.value is not None
        ]
        return bool(found)

    await read_topic(
        harness.bootstrap, harness.settings.catalog_topic, until=published, timeout=STARTUP_TIMEOUT
    )
    return found[0]


async def test_the_catalog_topic_carries_every_operation_of_the_api(running: Running) -> None:
    record, event = await discord_record(running.harness)
    print(
        f"\nmcp_worker start to Discord's catalog record on the topic: "
        f"{record.timestamp / 1000 - running.started:.1f}s "
        f"({len(record.value):,} bytes before compression)"
    )

    assert event.type == MCP_CATALOG_UPDATED
    assert len(record.value) > KAFKA_DEFAULT_MAX_MESSAGE_BYTES  # only fits compressed
    entry = event.data["entry"]
    assert entry["transport"] == "openapi"
    assert entry["api_version"] == "10"
    tools = {tool["name"]: tool for tool in entry["tools"]}
    assert len(entry["tools"]) == 242
    assert set(tools) == operation_ids()
    assert all(tool["input_schema"]["type"] == "object" for tool in tools.values())
    assert "content" in tools["create_message"]["input_schema"]["properties"]["body"]["properties"]
    assert tools["get_my_user"]["annotations"]["read_only"] is True


async def test_an_unchanged_record_is_not_sent_again(running: Running) -> None:
    harness = running.harness
    await discord_record(harness)

    await harness.worker.discovery.refresh("discord", STARTUP_TIMEOUT)  # what a probe does
    records = await read_all(harness, harness.settings.catalog_topic)

    assert len([r for r in records if r.key == b"discord"]) == 1


async def test_the_tool_loops_catalog_view_reads_the_record(running: Running) -> None:
    harness = running.harness
    await discord_record(harness)
    view = CatalogView(
        KafkaConnection(bootstrap_servers=harness.bootstrap),
        harness.settings.catalog_topic,
        client_id="test-llm-tool-loop-catalog",
    )
    following = asyncio.create_task(view.run())
    try:
        await asyncio.wait_for(view.ready.wait(), 60)

        tools = view.tools_for(None, "discord", ["*"])
        chosen = view.tools_for("acme", "discord", ["create_*", "get_my_user"])
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following

    assert len(tools) == 242
    assert {tool.name for tool in chosen} >= {"create_message", "get_my_user"}
    message = next(tool for tool in chosen if tool.name == "create_message")
    assert message.input_schema is not None
    assert "channel_id" in message.input_schema["properties"]


async def test_a_listing_too_large_for_its_reply_topic_fails_saying_what_fits(
    running: Running,
) -> None:
    harness = running.harness
    await discord_record(harness)

    with_schemas = await harness.send(MCP_CATALOG_LIST_REQUESTED, {"servers": ["discord"]})
    failed = await harness.result(with_schemas)
    without = await harness.send(
        MCP_CATALOG_LIST_REQUESTED, {"servers": ["discord"], "include_schemas": False}
    )
    listed = await harness.result(without)

    assert failed.type == "ferryman.mcp.failed", failed.data
    error = failed.data["error"]
    assert error["code"] == "too_large"
    assert error["retryable"] is False
    assert "include_schemas: false" in error["message"]
    assert harness.settings.default_reply_topic in error["message"]
    assert listed.type == "ferryman.mcp.catalog.list.completed", listed.data
    (entry,) = listed.data["servers"]
    assert {tool["name"] for tool in entry["tools"]} == operation_ids()
    assert all("input_schema" not in tool for tool in entry["tools"])


async def test_get_and_post_operations_are_called_with_the_bot_token(running: Running) -> None:
    harness, discord = running.harness, running.discord

    me = (await harness.result(await harness.call("discord", "get_my_user"))).data
    sent = (
        await harness.result(
            await harness.call(
                "discord",
                "create_message",
                {"channel_id": CHANNEL, "body": {"content": "hello from ferryman"}},
            )
        )
    ).data

    assert me.get("is_error") is False, me
    assert me["structured_content"] == BOT_USER
    assert sent.get("is_error") is False, sent
    assert sent["structured_content"]["content"] == "hello from ferryman"
    assert sent["structured_content"]["channel_id"] == CHANNEL
    assert sent["structured_content"]["author"]["id"] == BOT_USER["id"]
    (get,) = [r for r in discord.requests if (r.method, r.path) == ("GET", "/api/v10/users/@me")]
    (post,) = [r for r in discord.requests if r.method == "POST"]
    assert post.path == f"/api/v10/channels/{CHANNEL}/messages"
    assert json.loads(post.body) == {"content": "hello from ferryman"}
    assert {get.headers["Authorization"], post.headers["Authorization"]} == {f"Bot {TOKEN}"}
    settings = harness.settings
    for topic in (settings.default_reply_topic, settings.audit_topic, settings.catalog_topic):
        assert TOKEN.encode() not in record_bytes(await read_all(harness, topic))


async def test_a_record_the_catalog_topic_refuses_is_in_the_logs_and_health(
    kafka_bootstrap: str, tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def small_catalog_topic(prefix: str) -> None:
        await create_topic(kafka_bootstrap, f"{prefix}.mcp.catalog", 64 * 1024)

    async with serving_discord(kafka_bootstrap, tmp_path, unique, small_catalog_topic) as serving:
        harness = serving.harness
        # Returns once this listing's record (the same as the startup's) was offered.
        await harness.worker.discovery.refresh("discord", STARTUP_TIMEOUT)
        done = (await harness.result(await harness.call("discord", "get_my_user"))).data
        unpublished = harness.worker.worker.health()["catalog_unpublished"]

        assert done.get("is_error") is False, done  # the worker serves it all the same
        assert set(unpublished) == {"discord"}
        assert "more than topic" in unpublished["discord"]
        assert harness.settings.catalog_topic in unpublished["discord"]
        logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert any("catalog record of discord not published" in m for m in logged), logged
        assert not [
            r
            for r in await read_all(harness, harness.settings.catalog_topic)
            if r.key == b"discord"
        ]
