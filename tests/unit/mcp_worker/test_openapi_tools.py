"""OpenAPI spec loading and operation -> tool generation (pure, no network)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from jsonschema import Draft202012Validator

from mcp_worker.openapi import ApiSpec, Binding, OperationFilter, api_tools, load_spec
from mcp_worker.openapi.naming import fallback_name, sanitize_name

SPECS = Path(__file__).resolve().parents[2] / "fakes" / "openapi"


def _load(name: str, **kwargs: Any) -> ApiSpec:
    return load_spec((SPECS / name).read_bytes(), source=name, **kwargs)


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _valid(schema: dict[str, Any], arguments: Any) -> bool:
    return _validator(schema).is_valid(arguments)


@pytest.fixture(scope="module")
def pets() -> ApiSpec:
    return _load("units-pets-3.1.json")


def test_load_spec_reads_metadata_and_digest(pets: ApiSpec) -> None:
    assert (pets.title, pets.version, pets.openapi) == ("Unit pets", "1.0.0", "3.1.0")
    assert pets.server_url == "https://pets.example/v1"
    reformatted = json.dumps(json.loads((SPECS / "units-pets-3.1.json").read_text()), indent=None)
    same = load_spec(reformatted.encode(), source="again")
    assert same.digest == pets.digest
    assert len(pets.digest) == 64
    changed = json.loads(reformatted)
    changed["info"]["description"] = "edited"
    assert load_spec(json.dumps(changed).encode(), source="edited").digest != pets.digest


def test_load_spec_accepts_yaml_and_bundles_relative_file_refs() -> None:
    spec = _load("units-ext-root.yaml", base_dir=SPECS)
    tool = api_tools(spec).by_name()["createPet"]
    schema = tool.input_schema
    assert _valid(
        schema, {"body": {"name": "rex", "tag": {"label": "a", "parent": {"label": "b"}}}}
    )
    assert not _valid(schema, {"body": {"name": "rex", "tag": {"parent": {"label": "b"}}}})


def test_load_spec_refuses_external_refs_without_base_dir_and_urls() -> None:
    with pytest.raises(
        ValueError, match=r"units-ext-root\.yaml: external \$ref .* needs a base directory"
    ):
        _load("units-ext-root.yaml")
    doc = json.loads((SPECS / "units-compat-v1.json").read_text())
    doc["components"]["schemas"]["Pet"] = {"$ref": "https://schemas.example/pet.json"}
    with pytest.raises(ValueError, match="URL refs are not allowed"):
        load_spec(json.dumps(doc).encode(), source="remote", base_dir=SPECS)
    fetched: list[str] = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        return b'{"type": "object", "properties": {"id": {"type": "string"}}}'

    spec = load_spec(json.dumps(doc).encode(), source="remote", fetch_url=fetch)
    assert fetched == ["https://schemas.example/pet.json"]
    output = api_tools(spec).by_name()["getPet"].output_schema
    assert output is not None
    assert output["properties"] == {"id": {"type": "string"}}


def test_a_fetched_document_resolves_its_relative_refs_against_its_url() -> None:
    doc = json.loads((SPECS / "units-compat-v1.json").read_text())
    doc["components"]["schemas"]["Pet"] = {"$ref": "schemas/pet.json"}
    fetched: list[str] = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        return b'{"type": "object", "properties": {"id": {"type": "string"}}}'

    spec = load_spec(
        json.dumps(doc).encode(),
        source="remote",
        fetch_url=fetch,
        base_url="https://api.example/specs/openapi.json?v=2",
    )

    assert fetched == ["https://api.example/specs/schemas/pet.json"]
    output = api_tools(spec).by_name()["getPet"].output_schema
    assert output is not None
    assert output["properties"] == {"id": {"type": "string"}}


def test_load_spec_refuses_refs_leaving_the_base_dir(tmp_path: Path) -> None:
    doc = json.loads((SPECS / "units-compat-v1.json").read_text())
    doc["components"]["schemas"]["Pet"] = {"$ref": "../secret.json"}
    with pytest.raises(ValueError, match="outside the spec directory"):
        load_spec(json.dumps(doc).encode(), source="escape", base_dir=tmp_path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            (SPECS / "units-invalid.json").read_bytes(),
            "invalid OpenAPI 3.1.0 document at /paths/~1x/get/responses",
        ),
        (b'{"swagger": "2.0", "info": {}}', "only OpenAPI 3.0 and 3.1 are supported"),
        (b"openapi: [unclosed", "neither valid JSON nor YAML"),
        (b"- a list", "must be a mapping"),
    ],
)
def test_load_spec_rejects_bad_documents_naming_source(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=r"^units-bad: ") as caught:
        load_spec(data, source="units-bad")
    assert message in str(caught.value)


def test_tool_names_fallback_duplicates_and_skips(pets: ApiSpec) -> None:
    generated = api_tools(pets)
    names = [tool.name for tool in generated.tools]
    assert names == [
        "submitForm",
        "listPets",
        "createPet",
        "get_pets_by_id",
        "deletePet",
        "plant_tree",
        "plant_tree_2",
    ]
    assert "uploadBlob" not in names
    warnings = "\n".join(generated.warnings)
    assert (
        "PUT /upload: skipped: request body media types not supported (application/octet-stream)"
        in warnings
    )
    assert "'plant_tree' already used; named 'plant_tree_2'" in warnings
    assert "DELETE /pets/{id}: callbacks are ignored" in warnings
    assert "header parameter 'Accept' ignored" in warnings
    assert api_tools(pets).tools == generated.tools  # deterministic


def test_name_helpers() -> None:
    assert fallback_name("get", "/pets/{petId}") == "get_pets_by_petId"
    assert (
        fallback_name("post", "/v1/pet-owners/{owner.id}/pets")
        == "post_v1_pet_owners_by_owner_id_pets"
    )
    assert fallback_name("get", "/") == "get_root"
    assert sanitize_name("list pets/all") == "list_pets_all"
    assert len(sanitize_name("x" * 300)) == 128


def test_tool_metadata(pets: ApiSpec) -> None:
    tools = api_tools(pets).by_name()
    listing = tools["listPets"]
    assert listing.description == "List pets\n\nPages through pets."
    assert (listing.method, listing.path, listing.read_only, listing.idempotent) == (
        "GET",
        "/pets",
        True,
        True,
    )
    assert listing.tags == ("pets",)
    assert (tools["createPet"].read_only, tools["createPet"].idempotent) == (False, False)
    assert (tools["deletePet"].read_only, tools["deletePet"].idempotent) == (False, True)
    assert tools["get_pets_by_id"].operation_id is None
    assert tools["deletePet"].description == "DELETE /pets/{id}"


def test_parameters_bindings_and_location_collisions(pets: ApiSpec) -> None:
    tools = api_tools(pets).by_name()
    listing = tools["listPets"]
    assert listing.bindings == {
        "filter_kind_": Binding("query", "filter[kind]", "form", False),
        "limit": Binding("query", "limit", "form", True),
        "X-Trace": Binding("header", "X-Trace", "simple", False),
        "session": Binding("cookie", "session", "form", True),
    }
    schema = listing.input_schema
    assert schema["required"] == ["X-Trace"]
    assert _valid(schema, {"X-Trace": "t", "limit": 5, "session": "s", "filter_kind_": ["cat"]})
    assert not _valid(schema, {"limit": 5})  # required header missing
    assert not _valid(schema, {"X-Trace": "t", "limit": 0})
    assert not _valid(schema, {"X-Trace": "t", "filter_kind_": ["fish"]})
    assert not _valid(schema, {"X-Trace": "t", "Accept": "text/html"})  # unknown argument
    by_id = tools["get_pets_by_id"]
    assert by_id.bindings == {
        "path_id": Binding("path", "id", "simple", False),
        "query_id": Binding("query", "id", "form", True),
    }
    assert by_id.input_schema["required"] == ["path_id"]
    assert _valid(by_id.input_schema, {"path_id": "rex-1", "query_id": 3})
    assert not _valid(by_id.input_schema, {"path_id": "Rex!"})
    assert not _valid(by_id.input_schema, {"query_id": 3})


def test_allof_body_kept_and_validates(pets: ApiSpec) -> None:
    tool = api_tools(pets).by_name()["createPet"]
    body = tool.input_schema["properties"]["body"]
    assert "allOf" in body
    assert "additionalProperties" not in body
    assert tool.bindings["body"] == Binding("body", "body", content_type="application/json")
    schema = tool.input_schema
    assert _valid(schema, {"body": {"name": "rex", "tag": None}})
    assert _valid(schema, {"body": {"name": "rex", "tag": "good"}})
    assert not _valid(
        schema, {"body": {"name": "rex", "colour": "red"}}
    )  # unevaluatedProperties: false
    assert not _valid(schema, {"body": {"tag": "x"}})
    assert not _valid(schema, {})


def test_cyclic_schema_terminates_and_validates_recursive_data(pets: ApiSpec) -> None:
    tool = api_tools(pets).by_name()["plant_tree"]
    schema = tool.input_schema
    assert schema["properties"]["body"] == {"$ref": "#/$defs/Node"}
    assert schema["$defs"]["Node"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}
    deep = {
        "label": "root",
        "children": [{"label": "a", "children": [{"label": "b", "children": []}]}],
    }
    assert _valid(schema, {"body": deep})
    bad = {"label": "root", "children": [{"label": "a", "children": [{"children": []}]}]}
    errors = list(_validator(schema).iter_errors({"body": bad}))
    assert [list(e.absolute_path) for e in errors] == [["body", "children", 0, "children", 0]]
    assert not tool.output_wrapped  # a `$ref` to an object schema is an object
    assert tool.output_schema is not None
    assert tool.output_schema["type"] == "object"
    jsonschema.validate(deep, tool.output_schema, cls=Draft202012Validator)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"result": deep}, tool.output_schema, cls=Draft202012Validator)


def test_output_schema_from_first_json_2xx(pets: ApiSpec) -> None:
    tools = api_tools(pets).by_name()
    pet = tools["get_pets_by_id"].output_schema
    assert pet is not None
    assert not tools["get_pets_by_id"].output_wrapped
    assert _valid(pet, {"id": "1", "name": "rex"})
    assert not _valid(pet, {"name": "rex"})
    listing = tools["listPets"]
    assert listing.output_wrapped
    assert listing.output_schema is not None
    assert _valid(listing.output_schema, {"result": [{"id": "1", "name": "rex"}]})
    assert tools["deletePet"].output_schema is None


def test_openapi_30_nullable_and_exclusive_bounds() -> None:
    tool = api_tools(_load("units-legacy-3.0.json")).by_name()["addItem"]
    schema = tool.input_schema
    item = schema["properties"]["body"]
    assert item["properties"]["note"]["type"] == ["string", "null"]
    assert "nullable" not in json.dumps(schema)
    assert item["required"] == ["price"]  # readOnly id is not asked of the caller
    assert _valid(schema, {"body": {"price": 1.5, "note": None, "color": None}})
    assert _valid(schema, {"body": {"price": 1.5, "note": "x", "color": "red"}})
    assert not _valid(schema, {"body": {"price": 0}})  # exclusiveMinimum: true -> 0
    assert not _valid(schema, {"body": {"price": 2, "color": "green"}})
    assert tool.output_schema is not None
    assert tool.output_schema["required"] == ["id", "price"]


def test_include_exclude_filters(pets: ApiSpec) -> None:
    def names(**kwargs: Any) -> list[str]:
        return sorted(tool.name for tool in api_tools(pets, **kwargs).tools)

    assert names(include=OperationFilter(tags=frozenset({"trees"}))) == [
        "plant_tree",
        "plant_tree_2",
    ]
    assert names(include=OperationFilter(tags=frozenset({"pets"}), methods=frozenset({"get"}))) == [
        "get_pets_by_id",
        "listPets",
    ]
    assert names(include=OperationFilter(paths=("/pets/*",))) == ["deletePet", "get_pets_by_id"]
    assert names(
        include=OperationFilter(tags=frozenset({"pets"})),
        exclude=OperationFilter(tags=frozenset({"admin"}), methods=frozenset({"post"})),
    ) == ["get_pets_by_id", "listPets"]


def test_name_overrides(pets: ApiSpec) -> None:
    generated = api_tools(
        pets,
        name_overrides={"listPets": "pets.list", "GET /pets/{id}": "pets.get", "nope": "x"},
    )
    names = {tool.name for tool in generated.tools}
    assert {"pets.list", "pets.get"} <= names
    assert "listPets" not in names
    assert "name override 'nope' matches no selected operation" in generated.warnings
    with pytest.raises(ValueError, match="not a valid tool name"):
        api_tools(pets, name_overrides={"listPets": "bad name"})


def _doubling_chain_spec(depth: int) -> ApiSpec:
    """``Level0`` refers to ``Level1`` twice, which refers to ``Level2`` twice, and so on:
    copying every use would write ``Level{depth}`` out ``2**depth`` times."""
    schemas: dict[str, Any] = {
        f"Level{i}": {
            "type": "object",
            "properties": {
                "left": {"$ref": f"#/components/schemas/Level{i + 1}"},
                "right": {"$ref": f"#/components/schemas/Level{i + 1}"},
            },
        }
        for i in range(depth)
    }
    schemas[f"Level{depth}"] = {
        "type": "object",
        "properties": {"leaf": {"$ref": "#/components/schemas/Leaf"}},
        "required": ["leaf"],
    }
    schemas["Leaf"] = {"type": "string", "minLength": 1}
    schemas["Tag"] = {"type": "string", "pattern": "^[a-z]+$"}
    root = {"$ref": "#/components/schemas/Level0"}
    document = {
        "openapi": "3.1.0",
        "info": {"title": "doubling", "version": "1"},
        "paths": {
            "/trees": {
                "post": {
                    "operationId": "plant",
                    "parameters": [
                        {
                            "name": "tag",
                            "in": "query",
                            "schema": {"$ref": "#/components/schemas/Tag"},
                        },
                        {
                            "name": "kind",
                            "in": "query",
                            "schema": {"$ref": "#/components/schemas/Leaf"},
                        },
                    ],
                    "requestBody": {"content": {"application/json": {"schema": root}}},
                    "responses": {
                        "200": {
                            "description": "ok",
                            "content": {"application/json": {"schema": root}},
                        }
                    },
                }
            }
        },
        "components": {"schemas": schemas},
    }
    return load_spec(json.dumps(document).encode(), source="doubling")


def test_shared_components_are_defined_once_not_copied_per_use() -> None:
    depth = 12
    tool = api_tools(_doubling_chain_spec(depth)).by_name()["plant"]
    schema, output = tool.input_schema, tool.output_schema
    assert output is not None
    # Linear in the document, not 2**12 copies of the leaf.
    assert len(json.dumps(schema)) < 10_000
    assert len(json.dumps(output)) < 10_000
    body = schema["properties"]["body"]
    assert body["properties"]["left"] == {"$ref": "#/$defs/Level1"}  # reached twice
    assert body["properties"]["right"] == {"$ref": "#/$defs/Level1"}
    assert set(schema["$defs"]) == {f"Level{i}" for i in range(1, depth + 1)} | {"Leaf"}
    # Used once in this tool: still inlined where it is used.
    assert schema["properties"]["tag"] == {"type": "string", "pattern": "^[a-z]+$"}
    # Reached from a parameter and from the body: defined once for both.
    assert schema["properties"]["kind"] == {"$ref": "#/$defs/Leaf"}
    assert output["properties"]["left"] == {"$ref": "#/$defs/Level1"}
    assert "Level0" not in output["$defs"]

    def nest(level: int, leaf: Any) -> dict[str, Any]:
        if level == depth:
            return {"leaf": leaf}
        return {"left": nest(level + 1, leaf)}

    assert _valid(schema, {"tag": "abc", "kind": "k", "body": nest(0, "x")})
    assert not _valid(schema, {"body": nest(0, "")})  # the leaf's minLength, 12 levels down
    assert not _valid(schema, {"kind": ""})
    assert _valid(output, nest(0, "x"))
    assert not _valid(output, nest(0, 5))


def test_output_schema_covers_every_2xx_json_body() -> None:
    """A search that answers 200 with results or 202 "index not ready" must accept both."""

    def json_response(schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": "ok", "content": {"application/json": {"schema": schema}}}

    results = {"$ref": "#/components/schemas/Results"}
    pending = {
        "type": "object",
        "properties": {"retry_after": {"type": "integer"}},
        "required": ["retry_after"],
    }
    document = {
        "openapi": "3.1.0",
        "info": {"title": "search", "version": "1"},
        "paths": {
            "/search": {
                "get": {
                    "operationId": "search",
                    "responses": {
                        "200": json_response(results),
                        "201": json_response(results),  # same schema: listed once
                        "202": json_response(pending),
                        "204": {"description": "nothing"},
                    },
                }
            },
            "/ids": {
                "get": {
                    "operationId": "ids",
                    "responses": {
                        "200": json_response({"type": "array", "items": {"type": "string"}}),
                        "202": json_response(pending),
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Results": {
                    "type": "object",
                    "properties": {"hits": {"type": "array"}},
                    "required": ["hits"],
                }
            }
        },
    }
    tools = api_tools(load_spec(json.dumps(document).encode(), source="search")).by_name()
    search = tools["search"]
    assert search.output_schema is not None
    assert not search.output_wrapped
    assert search.output_schema["type"] == "object"
    assert len(search.output_schema["anyOf"]) == 2
    assert _valid(search.output_schema, {"hits": []})
    assert _valid(search.output_schema, {"retry_after": 5})
    assert not _valid(search.output_schema, {"retry_after": "soon"})
    assert not _valid(search.output_schema, {})
    ids = tools["ids"]
    assert ids.output_wrapped  # one member is not an object: every body is wrapped
    assert ids.output_schema is not None
    assert _valid(ids.output_schema, {"result": ["a"]})
    assert _valid(ids.output_schema, {"result": {"retry_after": 1}})
    assert not _valid(ids.output_schema, {"result": 3})
