"""The provider fakes refuse what the real APIs refuse about prompt caching (so the wire
checks of the other tests can fail), and play the provider caches predictably."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.openai_server import FakeOpenAI

FIVE = {"type": "ephemeral"}
HOUR = {"type": "ephemeral", "ttl": "1h"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def anthropic() -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()


async def _messages(
    http: aiohttp.ClientSession, fake: FakeAnthropic, **body: Any
) -> tuple[int, dict[str, Any]]:
    payload = {"model": "claude-x", "max_tokens": 10, **body}
    headers = {"anthropic-version": "2023-06-01"}
    async with http.post(f"{fake.base_url}/v1/messages", json=payload, headers=headers) as r:
        return r.status, await r.json()


def _text(text: str, marker: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "text", "text": text, **({"cache_control": marker} if marker else {})}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"messages": [{"role": "user", "content": [_text(f"t{i}", FIVE) for i in range(5)]}]},
            "A maximum of 4 blocks",
        ),
        (
            {
                "system": [_text("s", FIVE)],
                "messages": [{"role": "user", "content": [_text("q", HOUR)]}],
            },
            "must not come after",
        ),
        (
            {"messages": [{"role": "user", "content": "q", "cache_control": FIVE}]},
            "messages.0.cache_control: Extra inputs",
        ),
        (
            {"messages": [{"role": "user", "content": [_text("q", {"type": "persistent"})]}]},
            "Input should be 'ephemeral'",
        ),
        (
            {"messages": [{"role": "user", "content": [_text("q", {**FIVE, "ttl": "2h"})]}]},
            "Input should be '5m' or '1h'",
        ),
        (
            {"system": [_text("", FIVE)], "messages": [{"role": "user", "content": "q"}]},
            "non-empty",
        ),
    ],
)
async def test_the_anthropic_fake_refuses_invalid_markers(
    http: aiohttp.ClientSession, anthropic: FakeAnthropic, body: dict[str, Any], message: str
) -> None:
    status, answer = await _messages(http, anthropic, **body)

    assert status == 400
    assert message in answer["error"]["message"]


async def test_the_anthropic_fake_writes_then_reads_with_the_long_part(
    http: aiohttp.ClientSession, anthropic: FakeAnthropic
) -> None:
    body = {
        "system": [_text("rules " * 30, HOUR)],
        "messages": [{"role": "user", "content": [_text("question one", FIVE)]}],
    }
    grown = {
        "system": body["system"],
        "messages": [
            {"role": "user", "content": "question one"},
            {"role": "assistant", "content": "answer"},
            {"role": "user", "content": [_text("question two", FIVE)]},
        ],
    }

    _, first = await _messages(http, anthropic, **body)
    _, second = await _messages(http, anthropic, **grown)

    one, two = first["usage"], second["usage"]
    assert one["cache_read_input_tokens"] == 0
    assert one["cache_creation"]["ephemeral_1h_input_tokens"] > 0
    assert one["cache_creation_input_tokens"] > one["cache_creation"]["ephemeral_1h_input_tokens"]
    assert two["cache_read_input_tokens"] == one["cache_creation_input_tokens"]  # look-back
    assert two["cache_creation"]["ephemeral_1h_input_tokens"] == 0


async def test_the_openai_fake_refuses_unknown_message_keys_and_plays_the_keyed_cache(
    http: aiohttp.ClientSession, openai: FakeOpenAI
) -> None:
    url = f"{openai.base_url}/chat/completions"
    leaked = {"role": "user", "content": [{"type": "text", "text": "q", "cache_control": FIVE}]}
    async with http.post(url, json={"model": "m", "messages": [leaked]}) as r:
        refused = (r.status, (await r.json())["error"]["param"])
    system = {"role": "system", "content": "rules one two three"}
    usages = []
    for key in ("k1", "k1", "k2"):
        body = {"model": "m", "messages": [system, {"role": "user", "content": "q"}],
                "prompt_cache_key": key, "prompt_cache_retention": "24h"}  # fmt: skip
        async with http.post(url, json=body) as r:
            usages.append((await r.json())["usage"]["prompt_tokens_details"]["cached_tokens"])

    assert refused == (400, "messages[0].content[0].cache_control")
    assert usages == [0, 4, 0]  # a repeat under the same key reads the prefix; another key not
