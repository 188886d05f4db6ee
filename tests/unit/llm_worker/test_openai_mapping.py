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
