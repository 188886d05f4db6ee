"""The fake OpenAI server's `/_stats` window (what the benchmark reads): chat calls, the TCP
connections that carried them, and concurrent streams, driven through the real SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import openai
import pytest
from aiohttp import ClientSession

from tests.fakes.openai_server import FakeOpenAI, Scenario


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI(Scenario(tokens=3))
    await server.start()
    yield server
    await server.stop()


def sdk(fake: FakeOpenAI) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key="test", max_retries=0)


async def stream_once(client: openai.AsyncOpenAI) -> str:
    stream = await client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def stats(fake: FakeOpenAI, reset: bool = False) -> dict[str, int]:
    url = f"http://127.0.0.1:{fake.port}/_stats"
    async with (
        ClientSession(raise_for_status=True) as http,
        http.post(url, json={}) if reset else http.get(url) as response,
    ):
        return await response.json()


async def test_one_client_reuses_one_connection_and_a_reset_starts_a_new_window(
    fake: FakeOpenAI,
) -> None:
    client = sdk(fake)
    for _ in range(3):
        assert await stream_once(client) == "tok0 tok1 tok2"
    first = await stats(fake)
    assert first["calls"] == 3
    assert first["connections"] == 1
    assert first["new_connections"] == 1

    assert (await stats(fake, reset=True))["calls"] == 0
    await stream_once(client)
    second = await stats(fake)
    await client.close()
    assert (second["calls"], second["connections"], second["new_connections"]) == (1, 1, 0)


async def test_a_client_per_call_opens_a_connection_per_call(fake: FakeOpenAI) -> None:
    for _ in range(3):
        client = sdk(fake)
        await stream_once(client)
        await client.close()
    window = await stats(fake)
    assert (window["calls"], window["connections"], window["new_connections"]) == (3, 3, 3)


async def test_peak_counts_streams_open_at_once_and_survives_until_reset(
    fake: FakeOpenAI,
) -> None:
    fake.default = Scenario(tokens=2, first_token_delay=1.0)
    client = sdk(fake)
    calls = [asyncio.create_task(stream_once(client)) for _ in range(2)]
    async with asyncio.timeout(10):
        while fake.stats.active_streams < 2:
            await asyncio.sleep(0.01)
    during = await stats(fake, reset=True)  # a reset keeps the streams still open as peak
    await asyncio.wait_for(asyncio.gather(*calls), 10)
    after = await stats(fake)
    await client.close()
    assert (during["active_streams"], during["peak_streams"]) == (2, 2)
    assert (after["active_streams"], after["peak_streams"], after["calls"]) == (0, 2, 0)
