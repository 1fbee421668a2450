"""The OpenAPI description of the HTTP API (``/openapi.json``) and a page for it (``/docs``).

Hand-written, because the hot endpoints parse their bodies themselves rather than
through models; kept next to the routes it describes.
"""

from __future__ import annotations

from html import escape
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from fleetcloud import __version__
from fleetcloud.api.http import JSONResponse

CHANNEL = "/api/agents/{agent_id}/channels/{channel_name}"
ERROR = {"$ref": "#/components/schemas/Error"}

ENDPOINTS: list[tuple[str, str, str, str]] = [
    ("get", "/healthz", "Liveness and database check", ""),
    ("get", "/metrics", "Prometheus metrics", ""),
    ("get", "/api/me", "Who the token speaks for", ""),
    ("get", "/api/agents", "Agents of the caller's organisation (?kind=device)", ""),
    ("post", "/api/agents", "Create a device, user or app agent; answers its first token", ""),
    ("get", "/api/agents/{agent_id}/channels", "List an agent's channels", "Channel[]"),
    ("get", CHANNEL, "Get a channel with its aggregate", "Channel"),
    ("post", CHANNEL, "Create a channel (if missing)", "Channel"),
    ("put", CHANNEL, "Create a channel or update is_private and schemas", "Channel"),
    ("get", CHANNEL + "/messages", "History, newest first (before, after, limit)", "Message[]"),
    ("post", CHANNEL + "/messages", 'Publish {"data": …, "ts"?: ms}', "Message"),
    ("get", CHANNEL + "/messages/timeseries", "Named fields over time", ""),
    ("get", CHANNEL + "/messages/{message_id}", "One message", "Message"),
    ("patch", CHANNEL + "/messages/{message_id}", "Merge into one message's data", "Message"),
    ("put", CHANNEL + "/messages/{message_id}", "Replace one message's data", "Message"),
    ("delete", CHANNEL + "/messages/{message_id}", "Delete one message", ""),
    ("get", CHANNEL + "/aggregate", "Current state", "Aggregate"),
    ("patch", CHANNEL + "/aggregate", "Merge-patch the state (?replace=a.b)", "Aggregate"),
    ("put", CHANNEL + "/aggregate", "Replace the state", "Aggregate"),
    ("post", "/api/agents/messages", "Publish many messages to many channels", ""),
    ("patch", "/api/agents/aggregates", "Merge-patch many aggregates", ""),
]

# Success statuses other than 200: deleting answers 204; creating an agent 201, and
# POST/PUT on a channel 201 when they created it (200 when it was there already).
STATUS = {("delete", CHANNEL + "/messages/{message_id}"): "204", ("post", "/api/agents"): "201"}
CREATES = {("post", CHANNEL), ("put", CHANNEL)}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "status": {"type": "integer"},
        },
    },
    "Channel": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "owner_id": {"type": "string"},
            "is_private": {"type": "boolean"},
            "aggregate_schema": {"type": ["object", "null"]},
            "message_schema": {"type": ["object", "null"]},
            "aggregate": {"$ref": "#/components/schemas/Aggregate"},
        },
    },
    "Message": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "author_id": {"type": "string"},
            "channel": {
                "type": "object",
                "properties": {"agent_id": {"type": "string"}, "name": {"type": "string"}},
            },
            "data": {},
            "attachments": {"type": "array"},
            "timestamp": {"type": "integer"},
        },
    },
    "Aggregate": {
        "type": "object",
        "properties": {
            "data": {},
            "attachments": {"type": "array"},
            "last_updated": {"type": ["integer", "null"]},
        },
    },
}


def _response(shape: str) -> dict[str, Any]:
    if not shape:
        return {"description": "OK"}
    name = shape.removesuffix("[]")
    schema: dict[str, Any] = {"$ref": f"#/components/schemas/{name}"}
    if shape.endswith("[]"):
        schema = {"type": "array", "items": schema}
    return {"description": "OK", "content": {"application/json": {"schema": schema}}}


def _operation(method: str, path: str, summary: str, shape: str) -> dict[str, Any]:
    status = STATUS.get((method, path), "200")
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {
            status: _response(shape),
            "4XX": {
                "description": "Bad input, no token, forbidden or not found",
                "content": {"application/json": {"schema": ERROR}},
            },
        },
    }
    if (method, path) in CREATES:
        operation["responses"]["201"] = _response(shape)
    params = [part[1:-1] for part in path.split("/") if part.startswith("{")]
    if params:
        operation["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in params
        ]
    if method in ("post", "put", "patch"):
        operation["requestBody"] = {"content": {"application/json": {"schema": {}}}}
    if path.startswith("/api/"):
        operation["security"] = [{"bearer": []}]
    return operation


def spec() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, shape in ENDPOINTS:
        paths.setdefault(path, {})[method] = _operation(method, path, summary, shape)
    return {
        "openapi": "3.1.0",
        "info": {"title": "fleetcloud", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def openapi_json(request: Request) -> Response:
    return JSONResponse(spec())


async def docs_page(request: Request) -> Response:
    rows = "".join(
        f"<tr><td><code>{m.upper()}</code></td><td><code>{escape(p)}</code></td>"
        f"<td>{escape(s)}</td></tr>"
        for m, p, s, _ in ENDPOINTS
    )
    return HTMLResponse(
        "<!doctype html><html lang=en><meta charset=utf-8><title>fleetcloud API</title>"
        "<style>body{font-family:system-ui;margin:2rem}td{padding:.2rem .8rem}</style>"
        "<h1>fleetcloud HTTP API</h1><p>Machine-readable: "
        "<a href=/openapi.json>/openapi.json</a> (OpenAPI 3.1). Send "
        "<code>Authorization: Bearer &lt;token&gt;</code> on every <code>/api</code> call.</p>"
        f"<table>{rows}</table></html>"
    )
