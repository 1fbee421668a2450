"""The OpenAPI document: it describes every route the app serves (and nothing else), and
it is structurally valid OpenAPI 3.1. (That the answers have the shapes it describes is
in test_openapi_conformance.py.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from starlette.routing import Route, WebSocketRoute

from fleetcloud.api.app import create_app
from fleetcloud.api.openapi import ENDPOINTS, spec
from fleetcloud.platform import Platform
from fleetcloud.settings import Settings

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# ---------------------------------------------------------------- a structural check
# What an OpenAPI 3.1 document must look like, written down as JSON Schema: the objects
# fleetcloud uses, with their required fields and no unknown ones (a typo such as
# "respones" or "requried" would otherwise pass unnoticed).

STRING = {"type": "string"}
EXTENSIONS: dict[str, Any] = {"^x-": {}}
REFERENCE = {
    "type": "object",
    "required": ["$ref"],
    "properties": {"$ref": STRING, "summary": STRING, "description": STRING},
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": ["object", "boolean"]}
MEDIA_TYPE = {
    "type": "object",
    "properties": {"schema": JSON_SCHEMA, "example": {}, "examples": {"type": "object"}},
    "additionalProperties": False,
}
CONTENT = {"type": "object", "additionalProperties": MEDIA_TYPE}


def or_reference(schema: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [REFERENCE, schema]}


def closed(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "patternProperties": EXTENSIONS,
        "additionalProperties": False,
    }


HEADER = closed([], {"description": STRING, "required": {"type": "boolean"}, "schema": JSON_SCHEMA})
RESPONSE = closed(
    ["description"],
    {
        "description": STRING,
        "content": CONTENT,
        "headers": {"type": "object", "additionalProperties": or_reference(HEADER)},
    },
)
PARAMETER = {
    **closed(
        ["name", "in"],
        {
            "name": STRING,
            "in": {"enum": ["query", "header", "path", "cookie"]},
            "description": STRING,
            "required": {"type": "boolean"},
            "deprecated": {"type": "boolean"},
            "schema": JSON_SCHEMA,
            "style": STRING,
            "explode": {"type": "boolean"},
        },
    ),
    # a path parameter must say required: true
    "if": {"properties": {"in": {"const": "path"}}},
    "then": {"required": ["required"], "properties": {"required": {"const": True}}},
}
REQUEST_BODY = closed(
    ["content"], {"description": STRING, "content": CONTENT, "required": {"type": "boolean"}}
)
SECURITY_REQUIREMENT = {"type": "object", "additionalProperties": {"type": "array"}}
OPERATION = closed(
    ["responses"],
    {
        "operationId": STRING,
        "summary": STRING,
        "description": STRING,
        "tags": {"type": "array", "items": STRING},
        "parameters": {"type": "array", "items": or_reference(PARAMETER)},
        "requestBody": or_reference(REQUEST_BODY),
        "responses": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": "^([1-5]([0-9]{2}|XX)|default)$"},
            "additionalProperties": or_reference(RESPONSE),
        },
        "security": {"type": "array", "items": SECURITY_REQUIREMENT},
        "deprecated": {"type": "boolean"},
    },
)
PATH_ITEM = closed(
    [],
    {
        **{method: OPERATION for method in METHODS},
        "summary": STRING,
        "description": STRING,
        "parameters": {"type": "array", "items": or_reference(PARAMETER)},
    },
)
SECURITY_SCHEME = {
    "oneOf": [
        closed(
            ["type", "name", "in"],
            {
                "type": {"const": "apiKey"},
                "name": STRING,
                "in": {"enum": ["query", "header", "cookie"]},
                "description": STRING,
            },
        ),
        closed(
            ["type", "scheme"],
            {
                "type": {"const": "http"},
                "scheme": STRING,
                "bearerFormat": STRING,
                "description": STRING,
            },
        ),
    ]
}
COMPONENTS = closed(
    [],
    {
        "schemas": {"type": "object", "additionalProperties": JSON_SCHEMA},
        "responses": {"type": "object", "additionalProperties": or_reference(RESPONSE)},
        "parameters": {"type": "object", "additionalProperties": or_reference(PARAMETER)},
        "requestBodies": {"type": "object", "additionalProperties": or_reference(REQUEST_BODY)},
        "securitySchemes": {"type": "object", "additionalProperties": SECURITY_SCHEME},
    },
)
OPENAPI_31 = closed(
    ["openapi", "info", "paths"],
    {
        "openapi": {"type": "string", "pattern": r"^3\.1\.[0-9]+$"},
        "info": closed(
            ["title", "version"],
            {"title": STRING, "version": STRING, "description": STRING, "summary": STRING},
        ),
        "jsonSchemaDialect": STRING,
        "servers": {"type": "array"},
        "paths": {
            "type": "object",
            "propertyNames": {"pattern": "^/"},
            "additionalProperties": PATH_ITEM,
        },
        "components": COMPONENTS,
        "security": {"type": "array", "items": SECURITY_REQUIREMENT},
        "tags": {
            "type": "array",
            "items": closed(["name"], {"name": STRING, "description": STRING}),
        },
    },
)


def pointer(document: dict[str, Any], ref: str) -> Any:
    """What a local ``#/a/b`` reference points at, or None."""
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def refs_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs_in(value)


def resolved(document: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = pointer(document, node["$ref"])
    return node


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield method, path, item[method]


def problems(document: dict[str, Any]) -> list[str]:
    """Everything wrong with ``document`` as OpenAPI 3.1 (empty when it is sound)."""
    found = [
        f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in Draft202012Validator(OPENAPI_31).iter_errors(document)
    ]
    if found:
        return found  # the checks below assume the structure
    for ref in refs_in(document):
        if not ref.startswith("#/") or pointer(document, ref) is None:
            found.append(f"$ref {ref} points at nothing")
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            found.append(f"schema {name} is not valid JSON Schema: {exc.message}")
    found += operation_problems(document)
    return found


def operation_problems(document: dict[str, Any]) -> list[str]:
    found: list[str] = []
    schemes = set(document.get("components", {}).get("securitySchemes", {}))
    tags = {tag["name"] for tag in document.get("tags", [])}
    ids: set[object] = set()
    for method, path, operation in operations(document):
        where = f"{method.upper()} {path}"
        params = [resolved(document, p) for p in operation.get("parameters", [])]
        keys = [(p["name"], p["in"]) for p in params]
        if len(keys) != len(set(keys)):
            found.append(f"{where}: a parameter is declared twice")
        in_path = {p["name"] for p in params if p["in"] == "path"}
        if in_path != set(re.findall(r"{([^}]+)}", path)):
            found.append(f"{where}: path parameters {sorted(in_path)} do not match the path")
        for requirement in operation.get("security", []):
            found += [f"{where}: no security scheme {n}" for n in set(requirement) - schemes]
        found += [f"{where}: undeclared tag {t}" for t in set(operation.get("tags", [])) - tags]
        operation_id = operation.get("operationId")
        if operation_id in ids:
            found.append(f"{where}: operationId {operation_id} is used twice")
        ids.add(operation_id)
    return found


def test_the_document_is_valid_openapi_3_1() -> None:
    document = spec()
    assert problems(document) == []
    assert document["openapi"] == "3.1.0"


def broken(change: str) -> dict[str, Any]:
    document = spec()
    register = document["paths"]["/api/v1/device/register"]["post"]
    if change == "response without description":
        del register["responses"]["201"]["description"]
    elif change == "misspelt field":
        register["respones"] = register.pop("responses")
    elif change == "dangling $ref":
        document["components"]["schemas"].pop("RegisteredDevice")
    elif change == "undeclared path parameter":
        document["paths"]["/api/v1/jobs/{job_id}"]["get"].pop("parameters")
    elif change == "unknown security scheme":
        document["components"]["securitySchemes"].pop("deviceKey")
    elif change == "invalid component schema":
        document["components"]["schemas"]["Job"]["required"] = "job_id"
    elif change == "bad status key":
        register["responses"]["2xx"] = register["responses"].pop("201")
    return document


@pytest.mark.parametrize(
    "change",
    [
        "response without description",
        "misspelt field",
        "dangling $ref",
        "undeclared path parameter",
        "unknown security scheme",
        "invalid component schema",
        "bad status key",
    ],
)
def test_the_structural_check_catches(change: str) -> None:
    assert problems(broken(change)) != []


# ---------------------------------------------------------------- the route table


def template_of(path: str) -> str:
    """A Starlette path as an OpenAPI template: ``{name:converter}`` → ``{name}``."""
    return re.sub(r"{(\w+):\w+}", r"{\1}", path)


def app_operations(tmp_path: Path) -> list[tuple[str, str, bool]]:
    """(method, template, open-ended) for every route of the app under ``/api/``; an
    open-ended route (a ``:path`` converter) serves every path below its prefix."""
    platform = Platform.from_settings(Settings(database_url=f"sqlite:///{tmp_path / 'db'}"))
    found = []
    for route in create_app(platform, manage_platform=False).routes:
        if not isinstance(route, Route | WebSocketRoute) or not route.path.startswith("/api/"):
            continue
        methods = {"GET"} if isinstance(route, WebSocketRoute) else (route.methods or set())
        open_ended = route.path.endswith(":path}")
        for method in sorted(methods - {"HEAD"}):
            found.append((method.lower(), template_of(route.path), open_ended))
    return found


def prefix_of(template: str) -> str:
    return template.rsplit("{", 1)[0]


def test_every_api_route_is_described(tmp_path: Path) -> None:
    described = {(method, path) for method, path, _ in operations(spec())}
    routed = app_operations(tmp_path)
    assert len(routed) > 60
    missing = []
    for method, template, open_ended in routed:
        if open_ended:
            below = prefix_of(template)
            if not any(m == method and p.startswith(below) for m, p in described):
                missing.append(f"{method.upper()} {below}…")
        elif (method, template) not in described:
            missing.append(f"{method.upper()} {template}")
    assert missing == [], "routes missing from the OpenAPI document (api/openapi.py)"


def test_every_described_operation_is_served(tmp_path: Path) -> None:
    routed = app_operations(tmp_path)
    exact = {(method, template) for method, template, open_ended in routed if not open_ended}
    below = [(method, prefix_of(t)) for method, t, open_ended in routed if open_ended]
    phantom = [
        f"{method.upper()} {path}"
        for method, path, _ in operations(spec())
        if path.startswith("/api/")
        and (method, path) not in exact
        and not any(m == method and path.startswith(p) for m, p in below)
    ]
    assert phantom == [], "the OpenAPI document describes routes the app does not have"


def test_the_route_walk_notices_a_missing_route(tmp_path: Path) -> None:
    """The check above compares like with like: drop one row and it is reported."""
    described = {(m, p) for m, p, _ in operations(spec())} - {("post", "/api/v1/jobs/execute")}
    routed = {(m, t) for m, t, open_ended in app_operations(tmp_path) if not open_ended}
    assert routed - described == {("post", "/api/v1/jobs/execute")}


# ---------------------------------------------------------------- what each operation says


def test_operations_state_credentials_errors_and_bodies() -> None:
    document = spec()
    schemes = document["components"]["securitySchemes"]
    assert schemes["deviceKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-Device-API-Key",
        "description": schemes["deviceKey"]["description"],
    }
    paths = document["paths"]
    status = paths["/api/v1/devices/{uuid}/jobs/{job_id}/status"]["patch"]
    assert status["security"] == [{"deviceKey": []}, {"bearer": []}]
    assert {"200", "400", "401", "403", "404", "409"} <= set(status["responses"])
    assert status["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/StatusUpdate"
    }
    assert paths["/api/v1/device/register"]["post"]["security"] == []
    assert paths["/api/commands"]["post"]["responses"]["202"]["content"]
    parser = paths["/api/parsers/{ref}"]["put"]["requestBody"]["content"]
    assert set(parser) == {"text/x-python"}
    error = resolved(document, status["responses"]["409"])
    assert error["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert document["components"]["schemas"]["Error"]["required"] == ["error", "message", "status"]
    ingest = paths["/api/ingestion/{installation_id}"]["post"]
    assert "Retry-After" in resolved(document, ingest["responses"]["429"])["headers"]


async def test_the_document_and_its_page_are_served(api: httpx.AsyncClient) -> None:
    served = await api.get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == spec()
    page = await api.get("/docs")
    for endpoint in ENDPOINTS:
        assert f"<code>{endpoint.path}</code>" in page.text
    assert "X-Device-API-Key" in page.text
