"""OpenAI request mapping: reasoning models, seed and end-user id."""

from __future__ import annotations

import pytest

from ferryman.contracts import ChatRequest
from llm_worker.providers.openai_mapping import to_openai_params


def _request(**extra: object) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "openai/x", "messages": [{"role": "user", "content": "hi"}], **extra}
    )


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ("gpt-4o-mini", "max_tokens"),
        ("o3-mini", "max_completion_tokens"),
        ("o1", "max_completion_tokens"),
        ("gpt-5", "max_completion_tokens"),
        ("llama3.2", "max_tokens"),
    ],
)
def test_reasoning_models_get_max_completion_tokens(model: str, field: str) -> None:
    params = to_openai_params(_request(max_tokens=50), model, stream=True)

    assert params[field] == 50
    assert {"max_tokens", "max_completion_tokens"} - {field} & set(params) == set()


def test_seed_and_metadata_user_id_are_forwarded() -> None:
    params = to_openai_params(
        _request(seed=7, metadata={"user_id": "u-1", "x": "y"}), "m", stream=False
    )

    assert (params["seed"], params["user"]) == (7, "u-1")
    assert "metadata" not in params
    assert "stream_options" not in params


def test_gemini_thought_signatures_are_stripped_from_tool_call_ids_for_other_providers() -> None:
    from llm_worker.providers.anthropic_mapping import to_anthropic_params

    request = ChatRequest.model_validate(
        {
            "model": "openai/x",
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "call_1~ts~c2lnbmF0dXJl",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1~ts~c2lnbmF0dXJl", "content": "ok"},
            ],
        }
    )

    openai_messages = to_openai_params(request, "gpt-4o", stream=True)["messages"]
    anthropic_messages = to_anthropic_params(request, "claude", default_max_tokens=10)["messages"]

    assert openai_messages[1]["tool_calls"][0]["id"] == "call_1"
    assert openai_messages[2]["tool_call_id"] == "call_1"
    assert anthropic_messages[1]["content"][0]["id"] == "call_1"
    assert anthropic_messages[2]["content"][0]["tool_use_id"] == "call_1"


def _keys(value: object) -> set[str]:
    """Every dict key anywhere in `value`."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


@pytest.mark.parametrize("stream", [True, False])
def test_breakpoints_never_reach_the_wire_but_key_and_retention_do(stream: bool) -> None:
    request = ChatRequest.model_validate(
        {
            "model": "openai/x",
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "s", "cache_control": {}}],
                 "cache_control": {}},
                {"role": "user", "content": "hi", "cache_control": {"ttl": "1h"}},
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "prompt_cache": {"key": "fm-abc", "retention": "long", "tools": {"ttl": "1h"}},
        }
    )  # fmt: skip

    params = to_openai_params(request, "gpt-4o", stream=stream)

    assert "cache_control" not in _keys(params)
    assert params["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "s"}]}
    assert (params["prompt_cache_key"], params["prompt_cache_retention"]) == ("fm-abc", "24h")


@pytest.mark.parametrize(("retention", "wire"), [("short", "in_memory"), ("long", "24h")])
def test_retention_maps_to_openai_names(retention: str, wire: str) -> None:
    params = to_openai_params(_request(prompt_cache={"retention": retention}), "m", stream=True)

    assert params["prompt_cache_retention"] == wire
    assert "prompt_cache_key" not in params


def test_no_prompt_cache_options_send_no_cache_fields() -> None:
    params = to_openai_params(_request(), "m", stream=True)

    assert not {"prompt_cache_key", "prompt_cache_retention"} & set(params)
