"""Auto mode's breakpoints and the per-deployment preparation of a request's prompt cache."""

from __future__ import annotations

from typing import Any

import pytest

from ferryman.contracts import ChatRequest
from ferryman.contracts.llm import MAX_CACHE_BREAKPOINTS
from ferryman.contracts.llm_cache import CacheControl
from llm_worker.caching.breakpoints import (
    UNKNOWN_MIN_TOKENS,
    min_tokens_for,
    place_breakpoints,
    resolve_ttls,
    stable_digest,
)
from llm_worker.caching.prompt_prep import namespaced_key, prepare_request
from llm_worker.routing.config import Deployment, DeploymentPromptCache, RoutePromptCache

LONG = "word " * 2000  # about 2,500 estimated tokens once in JSON
TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
AUTO = RoutePromptCache(auto=True)
OFF = RoutePromptCache()


def _request(*messages: dict[str, Any], **extra: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "r", "messages": list(messages), **extra})


def _system(text: str = LONG) -> dict[str, Any]:
    return {"role": "system", "content": text}


def _user(text: str, **extra: Any) -> dict[str, Any]:
    return {"role": "user", "content": text, **extra}


def _agent_turns() -> list[dict[str, Any]]:
    call = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}
    return [
        _user("find it"),
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "found"},
    ]


def _marked(request: ChatRequest) -> list[str]:
    """Where the request's markers are: `tools`, or `role[index]`."""
    where = ["tools"] if request.prompt_cache and request.prompt_cache.tools else []
    where += [f"{m.role}[{i}]" for i, m in enumerate(request.messages) if m.cache_control]
    return where


def _deployment(provider: str, model: str, **cache: Any) -> Deployment:
    return Deployment(provider=provider, model=model, prompt_cache=DeploymentPromptCache(**cache))


@pytest.mark.parametrize(
    ("provider", "model", "expected"),
    [
        ("anthropic", "claude-opus-4-5-20251101", 4096),
        ("anthropic", "claude-haiku-4-5", 4096),
        ("anthropic", "claude-3-5-haiku-latest", 2048),
        ("anthropic", "claude-3-haiku-20240307", 2048),
        ("anthropic", "claude-sonnet-4-5", 1024),
        ("openai", "gpt-4o", 1024),
        ("azure", "prod-chat", 1024),
        ("gemini", "gemini-2.5-flash-lite", 2048),
        ("gemini", "gemini-2.5-pro", 2048),
        ("gemini", "gemini-3-pro-preview", 4096),
        ("gemini", "gemini-1.0-ultra", UNKNOWN_MIN_TOKENS),
        ("mistral", "large", UNKNOWN_MIN_TOKENS),
    ],
)
def test_minimum_tokens_per_model_longest_pattern_first(
    provider: str, model: str, expected: int
) -> None:
    assert min_tokens_for(provider, model) == expected
    assert min_tokens_for(provider, model, override=77) == 77


def test_anthropic_marks_tools_last_system_and_the_last_turn_of_a_conversation() -> None:
    request = _request(_system("short rules"), _system(), *_agent_turns(), tools=TOOLS)

    placed = place_breakpoints(request, "anthropic", "claude-sonnet-4-5", 1024)

    assert _marked(placed) == ["tools", "system[1]", "tool[4]"]
    assert len(placed.cache_breakpoints()) <= 3
    assert _marked(request) == []  # the input is not changed


def test_anthropic_with_fewer_than_three_turns_marks_only_the_stable_prefix() -> None:
    placed = place_breakpoints(_request(_system(), _user("hi")), "anthropic", "claude-x", 1024)

    assert _marked(placed) == ["system[0]"]


def test_gemini_marks_only_the_stable_prefix() -> None:
    request = _request(_system(), *_agent_turns(), tools=TOOLS)

    placed = place_breakpoints(request, "gemini", "gemini-2.5-flash", 1024)

    assert _marked(placed) == ["tools", "system[0]"]


@pytest.mark.parametrize("provider", ["openai", "azure", "mock"])
def test_providers_that_cache_by_themselves_or_not_at_all_get_no_markers(provider: str) -> None:
    request = _request(_system(), *_agent_turns(), tools=TOOLS)

    assert place_breakpoints(request, provider, "m", 1) is request


def test_a_prefix_below_the_minimum_gets_no_marker() -> None:
    request = _request(_system("be brief"), *_agent_turns(), tools=TOOLS)

    assert _marked(place_breakpoints(request, "anthropic", "claude-x", 1024)) == []
    assert _marked(place_breakpoints(request, "anthropic", "claude-x", 10)) == [
        "tools",
        "system[0]",
        "tool[3]",
    ]


def test_auto_mode_never_overrides_explicit_breakpoints() -> None:
    marked = {"type": "ephemeral", "ttl": "1h"}
    request = _request(_system(), _user("q", cache_control=marked), tools=TOOLS)

    prepared = prepare_request(
        request, tenant="acme", deployment=_deployment("anthropic", "claude-x"), route=AUTO
    )

    assert _marked(prepared) == ["user[1]"]
    assert prepared.messages[1].cache_control == CacheControl(ttl="1h")
    assert prepared.prompt_cache is None  # no key of the stable prefix either


def test_a_request_can_refuse_or_ask_for_auto_mode_against_its_route() -> None:
    anthropic = _deployment("anthropic", "claude-x")
    refused = _request(_system(), _user("q"), prompt_cache={"auto": False})
    asked = _request(_system(), _user("q"), prompt_cache={"auto": True})

    assert _marked(prepare_request(refused, tenant="t", deployment=anthropic, route=AUTO)) == []
    assert _marked(prepare_request(asked, tenant="t", deployment=anthropic, route=OFF)) == [
        "system[0]"
    ]


def test_auto_mode_for_openai_sets_a_namespaced_key_of_the_stable_prefix_and_the_retention() -> (
    None
):
    request = _request(_system(), _user("q"), tools=TOOLS)
    route = RoutePromptCache(auto=True, retention="long")

    prepared = prepare_request(
        request, tenant="acme", deployment=_deployment("openai", "gpt-4o"), route=route
    )

    assert _marked(prepared) == []
    assert prepared.prompt_cache is not None
    digest = stable_digest(request)
    assert digest is not None
    assert prepared.prompt_cache.key == namespaced_key("acme", digest)
    assert prepared.prompt_cache.retention == "long"


def test_the_key_is_namespaced_per_tenant_stable_and_never_names_the_tenant() -> None:
    request = _request(_user("q"), prompt_cache={"key": "docs-v3"})
    openai = _deployment("openai", "gpt-4o")

    def key(tenant: str | None) -> str | None:
        prepared = prepare_request(request, tenant=tenant, deployment=openai, route=OFF)
        return prepared.prompt_cache.key if prepared.prompt_cache else None

    acme, again, other, none = key("acme"), key("acme"), key("globex"), key(None)
    assert acme == again
    assert len({acme, other, none}) == 3
    assert acme is not None
    assert acme.startswith("fm-")
    assert len(acme) == 35
    assert "acme" not in acme
    assert "docs-v3" not in acme


def test_no_tenant_an_empty_tenant_and_a_tenant_named_dash_never_share_a_key() -> None:
    keys = {namespaced_key(tenant, "docs-v3") for tenant in (None, "", "-", "null")}
    assert len(keys) == 4
    assert namespaced_key("a\0b", "c") != namespaced_key("a", "b\0c")


def test_a_deployment_that_cannot_take_the_fields_gets_none_of_them() -> None:
    request = _request(
        _system(),
        {"role": "user", "content": [{"type": "text", "text": "q", "cache_control": {}}]},
        tools=TOOLS,
        prompt_cache={"key": "k", "retention": "long", "tools": {}},
    )

    prepared = prepare_request(
        request, tenant="t", deployment=_deployment("openai", "llama", send=False), route=AUTO
    )

    assert prepared.prompt_cache is None
    assert prepared.cache_breakpoints() == []
    assert "cache_control" not in prepared.model_dump_json(exclude_none=True)


def test_the_route_retention_resolves_ttls_without_a_1h_after_a_5m() -> None:
    request = _request(
        _system(),
        _user("q", cache_control={}),
        prompt_cache={"tools": {"ttl": "5m"}},
        tools=TOOLS,
    )
    route = RoutePromptCache(retention="long")

    prepared = prepare_request(
        request, tenant="t", deployment=_deployment("anthropic", "claude-x"), route=route
    )

    assert [m.ttl for m in prepared.cache_breakpoints()] == ["5m", "5m"]
    assert [m.ttl for m in resolve_ttls(request, "long").cache_breakpoints()] == ["5m", "5m"]
    no_tools = _request(_system(), _user("q", cache_control={}))
    assert [m.ttl for m in resolve_ttls(no_tools, "long").cache_breakpoints()] == ["1h"]


def test_auto_mode_stays_within_the_breakpoint_limit_on_a_large_conversation() -> None:
    turns = [m for _ in range(10) for m in _agent_turns()]
    request = _request(_system(), _system(), *turns, tools=TOOLS)

    prepared = prepare_request(
        request, tenant="t", deployment=_deployment("anthropic", "claude-x"), route=AUTO
    )

    assert len(prepared.cache_breakpoints()) == 3 <= MAX_CACHE_BREAKPOINTS
    ChatRequest.model_validate(prepared.model_dump())  # still a valid request


def test_a_request_without_cache_options_passes_unchanged() -> None:
    request = _request(_system(), _user("q"))

    assert (
        prepare_request(request, tenant="t", deployment=_deployment("openai", "m"), route=OFF)
        is request
    )
