"""API entries of the registry file (`type: openapi`): what is accepted, what is refused with
a message naming the server and field, and how an entry's keys are read."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mcp_worker.openapi.auth import unsupported_schemes
from mcp_worker.registry import RegistryError, ServerConfig, parse_registry


def registry(**entry: Any) -> bytes:
    return json.dumps({"mcpServers": {"inv@2": {"type": "openapi", **entry}}}).encode()


def test_an_api_entry_in_a_few_lines() -> None:
    parsed = parse_registry(
        b"""
mcpServers:
  petstore@1:
    type: openapi
    spec: specs/petstore.yaml
    credentials: {api_key: {value: "env:PETSTORE_KEY"}}
    operations: {exclude: {methods: [delete]}}
    rate_limit: {requests: 100, window: 60}
"""
    )

    config = parsed.servers["petstore@1"]
    assert config.is_api
    assert config.transport == "openapi"
    assert config.api_cache_mode == "rfc"  # `auto`: as the API's cache headers say
    assert config.operations.exclude is not None
    assert config.operations.exclude.methods == ["delete"]
    assert config.rate_limit is not None
    assert config.rate_limit.limits().requests == 100


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"credentials": {"k": {"value": "sk-live-123"}}}, "value is a secret: give a reference"),
        ({"credentials": {"k": {"password": "hunter2", "username": "u"}}}, "password is a secret"),
        ({"credentials": {"k": {}}}, "give value, username/password"),
        ({"spec_digest": "xyz"}, "spec_digest"),
        ({"base_url": "ftp://example"}, "base_url"),
        ({"cache": {"mode": "on"}}, "an API's cache mode is off, auto, rfc or ttl"),
        ({"operations": {"include": {"methods": ["fetch"]}}}, "methods"),
        ({"rate_limit": {"requests": 0}}, "rate_limit.requests"),
    ],
)
def test_bad_api_entries_are_refused_clearly(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(RegistryError, match="inv@2") as refused:
        parse_registry(registry(spec="api.json", **entry))

    assert message in str(refused.value)
    assert "sk-live-123" not in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_api_keys_on_an_mcp_server_and_a_spec_without_type_are_refused() -> None:
    with pytest.raises(ValueError, match="base_url: only for type openapi"):
        ServerConfig.model_validate({"command": "x", "base_url": "http://a"})
    with pytest.raises(ValueError, match="cache modes rfc and ttl"):
        ServerConfig.model_validate({"command": "x", "cache": {"mode": "ttl"}})
    with pytest.raises(ValueError, match="type openapi takes a spec"):
        ServerConfig.model_validate({"spec": "api.json"})
    with pytest.raises(ValueError, match="exactly one of"):
        ServerConfig.model_validate({"type": "openapi", "spec": "a.json", "url": "http://a"})


@pytest.mark.parametrize("name", ["petstore@1", "petstore@2.1-beta", "plain"])
def test_server_names_may_carry_a_version(name: str) -> None:
    document = json.dumps({"mcpServers": {name: {"type": "openapi", "spec": "a.json"}}})

    assert name in parse_registry(document.encode()).servers


@pytest.mark.parametrize("name", ["a@", "@1", "a@1@2", "a/b@1"])
def test_malformed_versioned_names_are_refused(name: str) -> None:
    document = json.dumps({"mcpServers": {name: {"type": "openapi", "spec": "a.json"}}})

    with pytest.raises(RegistryError, match="server name"):
        parse_registry(document.encode())


def test_cache_modes_of_an_api() -> None:
    def mode(value: str) -> str:
        config = ServerConfig.model_validate(
            {"type": "openapi", "spec": "a.json", "cache": {"mode": value}}
        )
        return config.api_cache_mode

    assert [mode(m) for m in ("auto", "rfc", "ttl", "off")] == ["rfc", "rfc", "ttl", "off"]


def test_unsupported_security_schemes_are_named() -> None:
    schemes = {
        "key": {"type": "apiKey", "in": "header", "name": "X-Key"},
        "bearer": {"type": "http", "scheme": "bearer"},
        "digest": {"type": "http", "scheme": "digest"},
        "machines": {"type": "oauth2", "flows": {"clientCredentials": {"tokenUrl": "/t"}}},
        "users": {"type": "oauth2", "flows": {"authorizationCode": {}, "implicit": {}}},
        "oidc": {"type": "openIdConnect", "openIdConnectUrl": "https://id/.well-known"},
        "tls": {"type": "mutualTLS"},
    }

    warnings = unsupported_schemes(schemes)

    assert [w.split(" is not")[0] for w in warnings] == [
        "security scheme 'digest' (http digest)",
        "security scheme 'users' (oauth2 authorizationCode/implicit)",
        "security scheme 'oidc' (openIdConnect)",
        "security scheme 'tls' (mutualTLS)",
    ]
