"""Compatibility reports between two versions of an OpenAPI spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mcp_worker.openapi import ApiSpec, CompatEntry, compare, load_spec

SPECS = Path(__file__).resolve().parents[2] / "fakes" / "openapi"


def _load(name: str) -> ApiSpec:
    return load_spec((SPECS / name).read_bytes(), source=name)


def _edited(name: str, edit: Any) -> ApiSpec:
    document = json.loads((SPECS / name).read_text())
    edit(document)
    return load_spec(json.dumps(document).encode(), source=f"{name} (edited)")


def _kinds(entries: tuple[CompatEntry, ...]) -> set[tuple[str, str, bool, str]]:
    return {(e.operation, e.kind, e.breaking, e.detail) for e in entries}


def test_v1_to_v2_reports_each_breaking_kind_and_additions() -> None:
    report = compare(_load("units-compat-v1.json"), _load("units-compat-v2.json"))
    assert report.breaking
    assert (report.old_version, report.new_version) == ("1", "2")
    assert _kinds(report.entries) == {
        ("GET /stores", "removed_operation", True, "tool 'listStores' is gone"),
        ("GET /owners", "added_operation", False, "new tool 'listOwners'"),
        ("GET /pets", "new_required_parameter", True, "owner: new and required"),
        ("GET /pets", "added_optional_parameter", False, "sort: new, optional"),
        ("GET /pets", "narrowed_enum", True, "status: no longer accepts ['pending']"),
        ("GET /pets", "changed_type", True, "limit: type ['integer', 'string'] -> ['integer']"),
        ("GET /pets", "changed_type", True, "items[].id: type ['string'] -> ['integer']"),
        ("GET /pets", "removed_response_field", True, "items[].nickname: no longer returned"),
        # the path parameter was renamed petId -> id: the tool argument changes too
        ("GET /pets/{id}", "removed_parameter", True, "petId: no longer accepted"),
        ("GET /pets/{id}", "new_required_parameter", True, "id: new and required"),
        ("GET /pets/{id}", "changed_type", True, "id: type ['string'] -> ['integer']"),
        ("GET /pets/{id}", "removed_response_field", True, "nickname: no longer returned"),
    }
    breaking_flags = [entry.breaking for entry in report.entries]
    assert breaking_flags == sorted(breaking_flags, reverse=True)  # breaking first


def test_identical_specs_including_cycles_report_nothing() -> None:
    pets = _load("units-pets-3.1.json")
    report = compare(pets, _load("units-pets-3.1.json"))
    assert report.entries == ()
    assert not report.breaking


def test_only_additions_and_widening_are_not_breaking() -> None:
    def widen(document: dict[str, Any]) -> None:
        status = document["paths"]["/pets"]["get"]["parameters"][0]["schema"]
        status["enum"].append("archived")
        document["paths"]["/pets"]["get"]["parameters"][1]["schema"]["type"] = [
            "integer",
            "string",
            "null",
        ]
        document["components"]["schemas"]["Pet"]["properties"]["age"] = {"type": "integer"}
        document["paths"]["/toys"] = {
            "get": {"operationId": "listToys", "responses": {"200": {"description": "ok"}}}
        }

    report = compare(_load("units-compat-v1.json"), _edited("units-compat-v1.json", widen))
    assert not report.breaking
    assert _kinds(report.entries) == {
        ("GET /toys", "added_operation", False, "new tool 'listToys'")
    }


def test_renamed_operation_and_required_body_field_in_cyclic_schema() -> None:
    def edit(document: dict[str, Any]) -> None:
        document["paths"]["/trees"]["post"]["operationId"] = "plantTree"
        document["components"]["schemas"]["Node"]["required"] = ["label", "kind"]
        document["components"]["schemas"]["Node"]["properties"]["kind"] = {"type": "string"}
        document["components"]["schemas"]["Node"]["properties"]["label"]["enum"] = ["oak", "elm"]

    report = compare(_load("units-pets-3.1.json"), _edited("units-pets-3.1.json", edit))
    entries = _kinds(report.entries)
    assert (
        "POST /trees",
        "renamed_operation",
        True,
        "tool 'plant_tree' is now 'plantTree'",
    ) in entries
    assert ("POST /trees", "new_required_parameter", True, "body.kind: new and required") in entries
    assert (
        "POST /trees",
        "narrowed_enum",
        True,
        "body.label: now limited to ['oak', 'elm']",
    ) in entries
    # the duplicate-name fallback moves to the other operation once the clash is gone
    assert (
        "GET /trees/{treeId}/leaves",
        "renamed_operation",
        True,
        "tool 'plant_tree_2' is now 'plant_tree'",
    ) in entries


def test_removed_output_schema_and_composition_changes() -> None:
    def edit(document: dict[str, Any]) -> None:
        del document["paths"]["/pets/{id}"]["get"]["responses"]["200"]
        document["paths"]["/pets/{id}"]["get"]["responses"]["204"] = {"description": "empty"}
        document["components"]["schemas"]["NewPet"]["allOf"].append({"required": ["tag"]})

    report = compare(_load("units-pets-3.1.json"), _edited("units-pets-3.1.json", edit))
    entries = _kinds(report.entries)
    assert (
        "GET /pets/{id}",
        "removed_output_schema",
        True,
        "the success response has no JSON schema",
    ) in entries
    # allOf members are analysed as one object: a member's new requirement is breaking.
    assert ("POST /pets", "new_required_parameter", True, "body.tag: now required") in entries
    assert not any(kind == "changed_composition" for _, kind, _, _ in entries)
    assert report.breaking
