"""A real, sizeable OpenAPI document loaded whole, every operation turned into a tool.

The document is Discord's HTTP API (OpenAPI 3.1, MIT), kept as published in
tests/fakes/openapi/real/ (its README names the source commit). Expectations are
computed from the raw JSON independently of the loader, so a silently dropped
operation, an invalid schema or a lost security requirement fails here.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from mcp_worker.openapi import ApiSpec, ApiTools, OperationTool, api_tools, load_spec
from mcp_worker.openapi.cli import OpenApiCommand
from mcp_worker.openapi.schemas import refs_in
from mcp_worker.openapi.spec import canonical_json

REAL_SPEC = (
    Path(__file__).resolve().parents[2] / "fakes" / "openapi" / "real" / "discord-openapi.json"
)
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
# The only constructs of this document the tools knowingly cannot express: request bodies
# offered as multipart only (files are not uploaded). No operation may be skipped.
EXPECTED_WARNINGS = (
    "POST /applications/{application_id}/attachment: "
    "multipart body sent as text fields only (no file uploads)",
    "POST /guilds/{guild_id}/stickers: multipart body sent as text fields only (no file uploads)",
    "PUT /invites/{code}/target-users: multipart body sent as text fields only (no file uploads)",
)


@dataclass(frozen=True)
class Loaded:
    raw: dict[str, Any]
    spec: ApiSpec
    generated: ApiTools

    def operations(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The document's operations keyed by (METHOD, path), read straight from the JSON."""
        return {
            (method.upper(), path): item[method]
            for path, item in self.raw["paths"].items()
            for method in HTTP_METHODS
            if method in item
        }


@pytest.fixture(scope="module")
def loaded() -> Loaded:
    data = REAL_SPEC.read_bytes()
    started = time.perf_counter()
    spec = load_spec(data, source=REAL_SPEC.name)
    loaded_at = time.perf_counter()
    generated = api_tools(spec)
    done = time.perf_counter()
    print(
        f"\n{REAL_SPEC.name} ({len(data):,} bytes, {len(generated.tools)} tools): "
        f"load_spec {loaded_at - started:.2f}s, api_tools {done - loaded_at:.2f}s"
    )
    return Loaded(json.loads(data), spec, generated)


def _schemas(tool: OperationTool) -> list[tuple[str, dict[str, Any]]]:
    found = [("input", tool.input_schema)]
    if tool.output_schema is not None:
        found.append(("output", tool.output_schema))
    return found


def test_the_document_loads_whole(loaded: Loaded) -> None:
    spec = loaded.spec
    assert (spec.openapi, spec.title, spec.version) == ("3.1.0", "Discord HTTP API (Preview)", "10")
    assert spec.server_url == "https://discord.com/api/v10"
    assert set(spec.document["paths"]) == set(loaded.raw["paths"])
    assert (
        spec.document["components"]["schemas"].keys() == loaded.raw["components"]["schemas"].keys()
    )


def test_every_operation_becomes_a_tool(loaded: Loaded) -> None:
    operations = loaded.operations()
    tools = loaded.generated.tools
    assert len(operations) == 242
    assert len(tools) == len(operations)
    assert {(tool.method, tool.path) for tool in tools} == set(operations)
    assert loaded.generated.warnings == EXPECTED_WARNINGS
    for tool in tools:
        operation = operations[(tool.method, tool.path)]
        assert tool.operation_id == operation["operationId"]
        assert tool.name == operation["operationId"]  # already valid names: kept as written


def test_tool_names_are_unique_and_valid(loaded: Loaded) -> None:
    names = [tool.name for tool in loaded.generated.tools]
    assert len(set(names)) == len(names)
    assert [name for name in names if not TOOL_NAME.fullmatch(name)] == []


def test_every_schema_is_valid_json_schema_2020_12_with_resolvable_refs(loaded: Loaded) -> None:
    distinct: dict[bytes, tuple[str, dict[str, Any]]] = {}
    for tool in loaded.generated.tools:
        for kind, schema in _schemas(tool):
            distinct.setdefault(canonical_json(schema), (f"{tool.name} {kind}", schema))
    for where, schema in distinct.values():  # equal schemas are checked once (metaschema is slow)
        Draft202012Validator.check_schema(schema)
        defs = schema.get("$defs", {})
        dangling = [ref for ref in refs_in(schema) if ref.removeprefix("#/$defs/") not in defs]
        assert dangling == [], f"{where}: refs outside $defs"


def test_an_output_schema_exactly_where_a_2xx_answers_json(loaded: Loaded) -> None:
    operations = loaded.operations()
    for tool in loaded.generated.tools:
        responses = operations[(tool.method, tool.path)]["responses"]
        answers_json = any(
            "schema" in (response.get("content") or {}).get("application/json", {})
            for status, response in responses.items()
            if status.startswith("2")
        )
        assert (tool.output_schema is not None) == answers_json, tool.name
    with_output = [tool for tool in loaded.generated.tools if tool.output_schema is not None]
    assert len(with_output) == 183


def test_output_schema_accepts_both_200_results_and_202_index_not_ready(loaded: Loaded) -> None:
    search = loaded.generated.by_name()["thread_search"]
    assert search.output_schema is not None
    assert not search.output_wrapped
    output = Draft202012Validator(search.output_schema)
    results = {"threads": [], "members": [], "has_more": False, "total_results": 0}
    not_ready = {"message": "Index not yet available", "code": 110000, "documents_indexed": 0}
    assert output.is_valid(results)
    assert output.is_valid({**not_ready, "retry_after": 2})
    assert not output.is_valid(not_ready)  # neither shape: no retry_after, no threads


def test_input_schemas_are_closed_argument_objects(loaded: Loaded) -> None:
    operations = loaded.operations()
    for tool in loaded.generated.tools:
        schema = tool.input_schema
        assert schema["type"] == "object"
        assert schema["additionalProperties"] is False
        assert set(schema["properties"]) == set(tool.bindings)
        assert set(schema.get("required", [])) <= set(schema["properties"])
        path_params = set(re.findall(r"\{([^}]+)\}", tool.path))
        assert {b.name for b in tool.bindings.values() if b.location == "path"} == path_params
        assert ("body" in tool.bindings) == ("requestBody" in operations[(tool.method, tool.path)])


def test_schemas_stay_smaller_than_the_document(loaded: Loaded) -> None:
    """A component reached many times is defined once, so no tool outgrows its document
    (copying every use made one output schema 1.7 MB from this 0.6 MB document)."""
    document_size = len(canonical_json(loaded.raw))
    largest = max(
        (len(canonical_json(schema)), tool.name, kind)
        for tool in loaded.generated.tools
        for kind, schema in _schemas(tool)
    )
    assert largest[0] < document_size, largest


def test_read_only_and_idempotent_follow_the_method(loaded: Loaded) -> None:
    for tool in loaded.generated.tools:
        assert tool.read_only == (tool.method in {"GET", "HEAD", "OPTIONS"}), tool.name
        assert tool.idempotent == (tool.method in {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
    methods = {tool.method for tool in loaded.generated.tools}
    assert methods == {"GET", "PUT", "POST", "DELETE", "PATCH"}


def test_security_requirements_are_carried_per_operation(loaded: Loaded) -> None:
    operations = loaded.operations()
    schemes = set(loaded.raw["components"]["securitySchemes"])
    assert schemes == {"BotToken", "OAuth2"}
    for tool in loaded.generated.tools:
        expected = [
            {name: tuple(scopes) for name, scopes in requirement.items()}
            for requirement in operations[(tool.method, tool.path)]["security"]
        ]
        assert [dict(requirement) for requirement in tool.security] == expected
        assert {name for requirement in tool.security for name in requirement} <= schemes
    optional_auth = loaded.generated.by_name()["get_guild_widget"].security
    assert [dict(requirement) for requirement in optional_auth] == [{}, {"BotToken": ()}]


def test_generated_schemas_accept_and_reject_real_arguments(loaded: Loaded) -> None:
    tools = loaded.generated.by_name()
    guild = Draft202012Validator(tools["get_guild"].input_schema)
    assert guild.is_valid({"guild_id": "81384788765712384", "with_counts": True})
    assert not guild.is_valid({"guild_id": "../../users/@me"})  # snowflake pattern
    assert not guild.is_valid({"with_counts": True})  # path parameter required
    message = tools["create_message"]
    assert message.bindings["body"].content_type == "application/json"  # over form/multipart
    send = Draft202012Validator(message.input_schema)
    assert send.is_valid({"channel_id": "1", "body": {"content": "hello", "embeds": None}})
    assert not send.is_valid({"channel_id": "1", "body": {"content": "x" * 4001}})
    assert not send.is_valid({"channel_id": "one", "body": {"content": "hi"}})


def test_cli_inspect_lists_every_tool_and_exits_0(loaded: Loaded) -> None:
    out, err = io.StringIO(), io.StringIO()
    command = OpenApiCommand(out=out, err=err)
    parser = argparse.ArgumentParser(prog="ferryman openapi")
    command.configure(parser)

    code = command.run(parser.parse_args(["inspect", str(REAL_SPEC)]))

    assert code == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == f"Discord HTTP API (Preview) 10 (3.1.0, sha256 {loaded.spec.digest[:12]})"
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(
        tool.name for tool in loaded.generated.tools
    )
    assert err.getvalue().splitlines() == [f"warning: {w}" for w in EXPECTED_WARNINGS]
