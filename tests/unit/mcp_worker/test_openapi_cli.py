"""`ferryman openapi inspect|diff`: the mcp_worker's command, found by the `ferryman` CLI
through its entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ferryman.cli import main as ferryman
from ferryman.cli_plugins import installed_plugins

FIXTURES = Path(__file__).resolve().parents[2] / "fakes" / "openapi"


def test_the_worker_s_command_is_installed_in_the_cli() -> None:
    assert "openapi" in installed_plugins()


def test_inspect_lists_the_tools_with_their_method_path_and_hints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = ferryman(["openapi", "inspect", str(FIXTURES / "api-v1.json")])

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].startswith("Inventory 1.0.0 (3.1.0, sha256 ")
    rows = {line.split()[0]: line.split()[1:] for line in out[1:]}
    assert rows["getItem"] == ["GET", "/items/{itemId}", "read-only"]
    assert rows["replaceItem"] == ["PUT", "/items/{itemId}", "idempotent"]
    assert rows["createItem"] == ["POST", "/items"]


def test_inspect_as_json_carries_the_schemas(capsys: pytest.CaptureFixture[str]) -> None:
    assert ferryman(["openapi", "inspect", str(FIXTURES / "api-v1.json"), "--json"]) == 0

    listing = json.loads(capsys.readouterr().out)
    tools = {tool["name"]: tool for tool in listing["tools"]}
    assert tools["getItem"]["input_schema"]["required"] == ["itemId"]
    assert listing["version"] == "1.0.0"


def test_diff_exits_1_on_a_breaking_change_and_0_without(
    capsys: pytest.CaptureFixture[str],
) -> None:
    v1, v2 = str(FIXTURES / "api-v1.json"), str(FIXTURES / "api-v2.json")

    breaking = ferryman(["openapi", "diff", v1, v2, "--json"])
    report = json.loads(capsys.readouterr().out)
    same = ferryman(["openapi", "diff", v1, v1])
    out = capsys.readouterr().out

    assert breaking == 1
    assert report["breaking"] is True
    kinds = {(e["operation"], e["kind"]) for e in report["entries"] if e["breaking"]}
    assert ("DELETE /items/{itemId}", "removed_operation") in kinds
    assert ("GET /items", "new_required_parameter") in kinds
    assert ("GET /items", "changed_type") in kinds
    assert ("GET /items/{itemId}", "removed_response_field") in kinds  # inside an allOf
    assert same == 0
    assert out.strip() == "1.0.0 -> 1.0.0: compatible"


def test_an_invalid_document_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    code = ferryman(["openapi", "inspect", str(FIXTURES / "units-invalid.json")])

    assert code == 2
    assert "units-invalid.json" in capsys.readouterr().err
