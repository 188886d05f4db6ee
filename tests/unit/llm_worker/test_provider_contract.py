"""One contract suite, run against every provider through its real SDK and its fake server.

Whichever provider serves a request, the stream must have the same shape: text deltas
that concatenate to the answer, tool calls with stable indexes and JSON arguments, usage,
a finish reason from one set, the same error codes for the same HTTP failures, and a
mid-stream failure that never folds into a truncated success.

And the same edge: no credential in any error (even when the upstream echoes the
request's headers), no redirect followed, one connection reused by sequential calls.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from llm_worker.chat.streaming import Finish, StreamEvent, TextDelta, ToolCallFragment, fold
from llm_worker.providers.anthropic import AnthropicChatModel
from llm_worker.providers.anthropic import create_client as anthropic_client
from llm_worker.providers.azure import AzureChatModel
from llm_worker.providers.config import AzureOpenAIConfig
from llm_worker.providers.gemini import GeminiChatModel
from llm_worker.providers.gemini import create_client as gemini_client
from llm_worker.providers.openai import OpenAIChatModel
from llm_worker.providers.openai import create_client as openai_client
from llm_worker.providers.port import ChatModel
from tests.fakes import anthropic_server, gemini_server, openai_server
from tests.fakes.http_fake import FakeHttpServer

IMAGE_URL = "https://example.com/cat.png"
# Keys of no known shape: only the adapters' knowledge of their own key can redact them.
KEYS = {
    "openai": "contract-openai-Zq8xW3kP0",
    "azure": "contract-azure-Jt5mV9rL2",
    "anthropic": "contract-anthropic-Hc4nB7sD1",
    "gemini": "contract-gemini-Qw2eR6tY8",
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
]


@dataclass
class Harness:
    """A provider under test, its fake, and how to script and inspect the fake."""

    name: str
    model: ChatModel
    model_name: str
    script: Callable[..., None]
    """script(**fields): the scenario fields all fakes share (answer, tool_calls, status,
    headers, cut_after)."""
    bodies: Callable[[], list[dict[str, Any]]]
    has_tool_result: Callable[[dict[str, Any], str, str], bool]
    has_image: Callable[[dict[str, Any], str], bool]
    fake: FakeHttpServer
    key: str


def _openai_tool_result(body: dict[str, Any], call_id: str, content: str) -> bool:
    return {"role": "tool", "tool_call_id": call_id, "content": content} in body["messages"]


def _openai_image(body: dict[str, Any], url: str) -> bool:
    parts = [
        p for m in body["messages"] if isinstance(m.get("content"), list) for p in m["content"]
    ]
    return {"type": "image_url", "image_url": {"url": url}} in parts


def _anthropic_tool_result(body: dict[str, Any], call_id: str, content: str) -> bool:
    blocks = [b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"]]
    return any(
        b.get("type") == "tool_result"
        and b.get("tool_use_id") == call_id
        and content in json.dumps(b.get("content"))
        for b in blocks
    )


def _anthropic_image(body: dict[str, Any], url: str) -> bool:
    blocks = [b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"]]
    return {"type": "image", "source": {"type": "url", "url": url}} in blocks


def _parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [part for content in body.get("contents", []) for part in content.get("parts", [])]


def _gemini_tool_result(body: dict[str, Any], call_id: str, content: str) -> bool:
    responses = [p.get("function_response") or p.get("functionResponse") for p in _parts(body)]
    return any(r and r.get("id") == call_id and content in json.dumps(r) for r in responses)


def _gemini_image(body: dict[str, Any], url: str) -> bool:
    files = [p.get("file_data") or p.get("fileData") for p in _parts(body)]
    return any(f and url in (f.get("file_uri"), f.get("fileUri")) for f in files)


@pytest.fixture(params=["openai", "azure", "anthropic", "gemini"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    name: str = request.param
    key = KEYS[name]
    if name in ("openai", "azure"):
        fake: Any = openai_server.FakeOpenAI()
        await fake.start()
        if name == "openai":
            model: ChatModel = OpenAIChatModel(
                openai_client(api_key=key, base_url=fake.base_url, timeout=5, connect_timeout=5)
            )
            model_name = scenario_key = "gpt-contract"
        else:
            config = AzureOpenAIConfig(endpoint=f"http://127.0.0.1:{fake.port}", api_key=key)  # type: ignore[arg-type]
            model, model_name, scenario_key = AzureChatModel(config), "contract", "contract"

        def script(**fields: Any) -> None:
            fake.scenarios[scenario_key] = openai_server.Scenario(**fields)

        yield Harness(
            name, model, model_name, script,
            lambda: [r.body for r in fake.chat_requests()], _openai_tool_result, _openai_image,
            fake, key,
        )  # fmt: skip
    elif name == "gemini":
        fake = gemini_server.FakeGemini()
        await fake.start()
        model = GeminiChatModel(gemini_client(api_key=key, base_url=fake.base_url, timeout=5))

        def script(**fields: Any) -> None:
            calls = fields.pop("tool_calls", [])
            fields["function_calls"] = [
                {"name": c["name"], "args": json.loads(c["arguments"])} for c in calls
            ]
            fake.scenarios["gemini-contract"] = gemini_server.Scenario(**fields)

        yield Harness(
            name, model, "gemini-contract", script,
            lambda: [r.body for r in fake.generate_requests()], _gemini_tool_result, _gemini_image,
            fake, key,
        )  # fmt: skip
    else:
        fake = anthropic_server.FakeAnthropic()
        await fake.start()
        model = AnthropicChatModel(
            anthropic_client(api_key=key, base_url=fake.base_url, timeout=5, connect_timeout=5)
        )

        def script(**fields: Any) -> None:
            fake.scenarios["claude-contract"] = anthropic_server.Scenario(**fields)

        yield Harness(
            name, model, "claude-contract", script,
            lambda: [r.body for r in fake.message_requests()], _anthropic_tool_result,
            _anthropic_image, fake, key,
        )  # fmt: skip
    await model.aclose()
    await fake.stop()


def _request(*messages: dict[str, Any], **extra: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "x/y", "messages": list(messages), **extra})


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


async def _events(h: Harness, request: ChatRequest) -> list[StreamEvent]:
    return [event async for event in h.model.stream(request, h.model_name)]


async def test_text_streams_as_deltas_that_fold_into_the_answer_with_usage(h: Harness) -> None:
    h.script(answer="The quick brown fox")

    events = await _events(h, _request(_user("hi")))
    completion = await fold(h.model.stream(_request(_user("hi")), h.model_name))

    texts = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(texts) > 1
    assert "".join(texts) == completion.content == "The quick brown fox"
    assert isinstance(events[-1], Finish)
    assert completion.finish_reason == "stop"
    assert completion.usage.input_tokens > 0
    assert completion.usage.output_tokens > 0


@pytest.mark.parametrize("count", [1, 2])
async def test_tool_calls_stream_with_stable_indexes_and_json_arguments(
    h: Harness, count: int
) -> None:
    calls = [{"name": "get_weather", "arguments": json.dumps({"city": c, "days": 3})}
             for c in ("Oslo", "Rome")[:count]]  # fmt: skip
    h.script(tool_calls=calls)
    request = _request(_user("weather?"), tools=TOOLS)

    events = await _events(h, request)
    completion = await fold(h.model.stream(request, h.model_name))

    fragments = [e for e in events if isinstance(e, ToolCallFragment)]
    firsts: dict[int, ToolCallFragment] = {}
    for fragment in fragments:
        firsts.setdefault(fragment.index, fragment)
    assert sorted(firsts) == list(range(count))
    assert all(f.id and f.name == "get_weather" for f in firsts.values())
    assert all(f.id is None and f.name is None for f in fragments if firsts[f.index] is not f)
    assert completion.finish_reason == "tool_calls"
    assert [json.loads(c.arguments) for c in completion.tool_calls] == [
        json.loads(c["arguments"]) for c in calls
    ]
    assert len({c.id for c in completion.tool_calls}) == count


async def test_a_tool_result_round_trip_reaches_the_provider(h: Harness) -> None:
    h.script(answer="It is sunny")
    request = _request(
        _user("weather in Oslo?"),
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_7",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_7", "content": "sunny, 21C"},
        tools=TOOLS,
    )

    completion = await fold(h.model.stream(request, h.model_name))

    assert completion.content == "It is sunny"
    assert h.has_tool_result(h.bodies()[-1], "call_7", "sunny, 21C")


async def test_an_image_input_reaches_the_provider(h: Harness) -> None:
    request = _request({"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": IMAGE_URL}},
    ]})  # fmt: skip

    await fold(h.model.stream(request, h.model_name))

    assert h.has_image(h.bodies()[-1], IMAGE_URL)


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (400, ErrorCode.INVALID_REQUEST, False),
        (401, ErrorCode.AUTH, False),
        (403, ErrorCode.PERMISSION_DENIED, False),
        (404, ErrorCode.NOT_FOUND, False),
        (429, ErrorCode.RATE_LIMITED, True),
        (500, ErrorCode.UNAVAILABLE, True),
        (503, ErrorCode.UNAVAILABLE, True),
    ],
)
async def test_each_http_error_class_maps_to_the_same_code(
    h: Harness, status: int, code: ErrorCode, retryable: bool
) -> None:
    h.script(status=status, headers={"retry-after": "2"} if status == 429 else {})

    with pytest.raises(FerrymanError) as failure:
        await fold(h.model.stream(_request(_user("hi")), h.model_name))

    error = failure.value
    assert (error.code, error.retryable, error.status, error.upstream) == (
        status and code,
        retryable,
        status,
        h.name,
    )
    if status == 429:
        assert error.retry_after == 2.0


async def test_a_stream_cut_mid_answer_fails_instead_of_completing(h: Harness) -> None:
    h.script(answer="one two three four five six", cut_after=2)

    events: list[StreamEvent] = []

    async def consume() -> None:
        async for event in h.model.stream(_request(_user("hi")), h.model_name):
            events.append(event)

    with pytest.raises(FerrymanError) as failure:
        await consume()

    assert failure.value.retryable
    assert not any(isinstance(e, Finish) for e in events)


async def _failure(h: Harness, call: str = "stream") -> FerrymanError:
    async def run() -> object:
        if call == "stream":
            return await fold(h.model.stream(_request(_user("hi")), h.model_name))
        return await h.model.list_models()

    with pytest.raises(FerrymanError) as failure:
        await run()
    return failure.value


@pytest.mark.parametrize("call", ["stream", "list_models"])
async def test_a_key_echoed_in_an_upstream_error_never_reaches_the_error(
    h: Harness, call: str
) -> None:
    h.fake.echo_headers_status = 400

    error = await _failure(h, call)

    published = error.to_info().model_dump_json()
    logged = "".join(traceback.format_exception(error))
    assert "upstream proxy refused the request" in error.message  # the echo did arrive
    assert "[REDACTED]" in error.message
    for text in (error.message, str(error), repr(error), published, logged):
        assert h.key not in text
    assert error.code is ErrorCode.INVALID_REQUEST
    assert error.upstream == h.name


async def test_a_redirect_to_another_origin_is_never_followed(h: Harness) -> None:
    elsewhere = openai_server.FakeOpenAI()
    await elsewhere.start()
    try:
        h.fake.redirect_to = f"http://127.0.0.1:{elsewhere.port}"

        error = await _failure(h)

        assert (error.code, error.retryable, error.status) == (ErrorCode.UNAVAILABLE, False, 307)
        assert f"redirecting to http://127.0.0.1:{elsewhere.port}" in error.message
        assert "never followed" in error.message
        assert elsewhere.connections == 0
        assert elsewhere.requests == []
    finally:
        await elsewhere.stop()


async def test_sequential_streams_reuse_one_connection(h: Harness) -> None:
    h.script(answer="one two three")

    for _ in range(20):
        completion = await fold(h.model.stream(_request(_user("hi")), h.model_name))
        assert completion.content == "one two three"

    assert h.fake.connections == 1


@pytest.fixture
def h(harness: Harness) -> Harness:
    return harness


RULES = "Answer from the handbook. " * 20


async def test_prompt_cache_reads_and_writes_are_reported_per_provider(h: Harness) -> None:
    """The same prompt twice: the second call reads what the first wrote (the fakes play
    each provider's cache). Gemini's read is scripted (its cached contents: E3's tests)."""
    h.script(answer="ok")
    system = {"role": "system", "content": RULES, "cache_control": {"ttl": "1h"}}
    marked = _request(system, _user("first question"), prompt_cache={"key": "contract"})
    if h.name == "gemini":
        h.script(answer="ok", cached_tokens=40)
        marked = _request({"role": "system", "content": RULES}, _user("first question"))

    first = (await fold(h.model.stream(marked, h.model_name))).usage
    second = (await fold(h.model.stream(marked, h.model_name))).usage

    reads, writes = (
        (first.cached_input_tokens, second.cached_input_tokens),
        (
            first.cache_write_tokens,
            second.cache_write_tokens,
        ),
    )
    rules_tokens = len(RULES.split())
    if h.name == "anthropic":
        written = first.cache_write_tokens
        assert written is not None
        assert written > rules_tokens
        assert reads == (0, written)
        assert writes == (written, 0)
        assert first.cache_write_long_tokens == written  # the system marker asked for 1h
        assert second.input_tokens == first.input_tokens  # reads and writes are parts of it
    elif h.name in ("openai", "azure"):
        assert reads == (0, rules_tokens)  # the prefix before the last message, under the key
        assert writes == (None, None)  # OpenAI does not report writes
        assert h.bodies()[-1]["prompt_cache_key"] == "contract"
    else:
        assert reads == (40, 40)
    for usage in (first, second) if h.name != "gemini" else ():  # its knob is free-standing
        assert (usage.cached_input_tokens or 0) + (usage.cache_write_tokens or 0) <= (
            usage.input_tokens
        )
    assert "cache_control" not in json.dumps(h.bodies()) or h.name == "anthropic"
