"""The response cache's key: what makes two requests the same answer, and what does not."""

from __future__ import annotations

from typing import Any

import pytest

from ferryman.contracts import ChatRequest
from llm_worker.caching.response_key import (
    KEY_PREFIX,
    escape_segment,
    prefix_key,
    response_key,
    worker_defaults,
)
from llm_worker.providers.config import AnthropicConfig, GeminiConfig

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
OTHER_TOOL = {"type": "function", "function": {"name": "search"}}


def _request(**fields: Any) -> ChatRequest:
    body: dict[str, Any] = {
        "model": "chat",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "temperature": 0,
    }
    body.update(fields)
    return ChatRequest.model_validate(body)


def _key(request: ChatRequest, **overrides: Any) -> str:
    args: dict[str, Any] = {
        "tenant": "acme",
        "namespace": None,
        "provider": "openai",
        "model": "gpt-4o",
    }
    args.update(overrides)
    return response_key(request, **args)


def test_the_key_names_tenant_namespace_and_target_in_its_path() -> None:
    key = _key(_request(), namespace="docs-v3")
    assert key.startswith(f"{KEY_PREFIX}acme/docs-v3/openai/gpt-4o/")
    assert len(key.rsplit("/", 1)[1]) == 64
    assert _key(_request()).startswith(f"{KEY_PREFIX}acme/-/openai/gpt-4o/")


def test_segments_are_escaped_so_no_tenant_can_reach_into_another_key_space() -> None:
    assert escape_segment("a/b*c?[d]\\%") == "a%2Fb%2Ac%3F%5Bd%5D%5C%25"
    sneaky = _key(_request(), tenant="acme/-")
    assert sneaky.startswith(f"{KEY_PREFIX}acme%2F-/-/")
    assert not sneaky.startswith(KEY_PREFIX + prefix_key("acme", ""))


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (
            {"messages": [{"role": "user", "content": "hi"}]},
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        ),
        ({"stream": True}, {"stream": False}),
        ({"metadata": {"user_id": "u1"}}, {"metadata": {"user_id": "u2", "trace": "x"}}),
        (
            {"messages": [{"role": "user", "content": "hi"}]},
            {
                "messages": [
                    {"role": "user", "content": "hi", "cache_control": {"type": "ephemeral"}}
                ]
            },
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}
                        ],
                    }
                ]
            },
        ),
        ({}, {"prompt_cache": {"key": "k", "retention": "long"}}),
        ({}, {"response_cache": {"ttl": 5, "namespace": "ignored-here"}}),
        ({"model": "chat"}, {"model": "openai/gpt-4o"}),
        ({"stop": "END"}, {"stop": ["END"]}),
    ],
)
def test_what_cannot_change_the_answer_is_left_out(
    left: dict[str, Any], right: dict[str, Any]
) -> None:
    assert _key(_request(**left)) == _key(_request(**right))


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ({"tools": [TOOL]}, {"tools": [OTHER_TOOL]}),
        ({"tools": [TOOL, OTHER_TOOL]}, {"tools": [OTHER_TOOL, TOOL]}),
        ({"tools": [TOOL], "tool_choice": "auto"}, {"tools": [TOOL], "tool_choice": "required"}),
        ({"temperature": 0}, {"temperature": 0.5}),
        ({"seed": 1}, {"seed": 2}),
        ({"top_p": 0.5}, {"top_p": 0.9}),
        ({"max_tokens": 10}, {"max_tokens": 11}),
        ({"stop": ["a"]}, {"stop": ["b"]}),
        ({}, {"response_format": {"type": "json_object"}}),
        ({"metadata": {"gemini_safety": "{}"}}, {"metadata": {"gemini_safety": '{"a": "b"}'}}),
        (
            {"messages": [{"role": "user", "content": "hi"}]},
            {"messages": [{"role": "user", "content": "hi "}]},
        ),
        (
            {"messages": [{"role": "user", "content": "café"}]},
            {"messages": [{"role": "user", "content": "cafe\u0301"}]},
        ),
    ],
)
def test_what_can_change_the_answer_changes_the_key(
    left: dict[str, Any], right: dict[str, Any]
) -> None:
    assert _key(_request(**left)) != _key(_request(**right))


def test_tenant_target_namespace_and_worker_defaults_change_the_key() -> None:
    request = _request()
    base = _key(request)
    assert _key(request, tenant="globex") != base
    assert _key(request, model="gpt-4o-mini") != base
    assert _key(request, provider="azure") != base
    assert _key(request, namespace="v2") != base
    assert _key(request, defaults={"max_tokens": 1}) != base
    # Same digest input except the tenant: the digest itself differs too (not only the path).
    assert base.rsplit("/", 1)[1] != _key(request, tenant="globex").rsplit("/", 1)[1]


def test_worker_defaults_name_what_shapes_each_providers_answers() -> None:
    defaults = worker_defaults(
        AnthropicConfig(default_max_tokens=1000, max_tokens_by_model={"claude-x": 8000}),
        GeminiConfig(safety_settings={"HARM_CATEGORY_HARASSMENT": "BLOCK_ONLY_HIGH"}),
    )
    assert defaults("anthropic", "claude-x") == {"max_tokens": 8000, "thinking": None}
    assert defaults("anthropic", "claude-y") == {"max_tokens": 1000, "thinking": None}
    assert defaults("gemini", "g") == {"safety": {"HARM_CATEGORY_HARASSMENT": "BLOCK_ONLY_HIGH"}}
    assert defaults("openai", "gpt-4o") == {}


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("", "acme/"),
        ("docs", "acme/docs"),
        ("docs/", "acme/docs/"),
        ("docs/openai/", "acme/docs/openai/"),
        ("docs/openai/gpt-4o/", "acme/docs/openai/gpt-4o/"),
        ("docs/openrouter/meta/llama/", "acme/docs/openrouter/meta%2Fllama/"),
    ],
)
def test_an_invalidation_prefix_is_escaped_like_the_keys(relative: str, expected: str) -> None:
    assert prefix_key("acme", relative) == expected


def test_a_prefix_matches_the_keys_it_names() -> None:
    key = _key(_request(), namespace="docs", provider="openrouter", model="meta/llama")
    assert key.startswith(KEY_PREFIX + prefix_key("acme", "docs/openrouter/meta/llama/"))
    assert not key.startswith(KEY_PREFIX + prefix_key("acme", "docs/openai/"))
    assert prefix_key(None, "") == ""


def test_deployments_differing_only_in_endpoint_get_different_keys() -> None:
    request = _request()
    a = _key(request, endpoint="http://gpu-a.internal:8000/v1")
    b = _key(request, endpoint="http://gpu-b.internal:8000/v1")
    worker_default = _key(request)
    assert len({a, b, worker_default}) == 3
    assert a == _key(request, endpoint="http://gpu-a.internal:8000/v1/")  # a final / is no change
    assert "gpu-a" not in a  # only in the digest: the path stays provider/model
