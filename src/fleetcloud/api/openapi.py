"""The OpenAPI 3.1 description of the HTTP API (``/openapi.json``) and a page for it (``/docs``).

Hand-written, because the hot endpoints parse their bodies themselves rather than
through models; kept next to the routes it describes. Each endpoint is one row of a
table (``ENDPOINTS``); the shapes it takes and answers are JSON Schemas (``api.shapes``).
The tests walk the app's route table against this one, so a new route without a row
fails them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from html import escape
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from fleetcloud import __version__
from fleetcloud.api.http import JSONResponse
from fleetcloud.api.shapes import (
    ANY,
    BOOLEAN,
    EXECUTION_STATUS,
    INTEGER,
    OBJECT,
    SCHEMAS,
    TEXT,
    Schema,
    array,
    choice,
    ref,
)
from fleetcloud.commands.core.models import CommandStatus
from fleetcloud.core.types import AgentKind
from fleetcloud.jobs.states import JobStatus

Auth = Literal["token", "admin", "device", "public", "ingestion"]
"""Who may call: any ``token``; an organisation ``admin``'s token; a ``device`` (its
``X-Device-API-Key``) or a token; nobody in particular (``public``); an integration's
``ingestion`` credentials."""

# ---------------------------------------------------------------- parameters


def query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "schema": schema, "description": description}


def page(name: str, low: int, high: int, default: int) -> Schema:
    schema = {"type": "integer", "minimum": low, "maximum": high, "default": default}
    return query(name, schema, f"at most this many ({low}–{high})")


DIGITS: Schema = {"type": "string", "pattern": "^[0-9]+$"}
MESSAGE_PAGE = [
    query("before", DIGITS, "only messages older than this id"),
    query("after", DIGITS, "only messages newer than this id"),
    query("before_ms", INTEGER, "only messages before this time (ms)"),
    query("after_ms", INTEGER, "only messages after this time (ms)"),
]
FIELD_NAMES = {
    **query("field_name", array(TEXT), "keep only these fields of data (repeatable)"),
    "explode": True,
}
EXECUTION_QUERY = [
    query("status", EXECUTION_STATUS, "only executions in this state"),
    query("latest", BOOLEAN, "only each device's latest attempt"),
    query("before", DIGITS, "only executions older than this execution id"),
    page("limit", 1, 500, 100),
]

PATH_PARAMETERS: dict[str, tuple[Schema, str]] = {
    "channel_name": (
        TEXT,
        "may contain '/'; a name ending in aggregate or messages escapes its slashes as %2F",
    ),
    "template_id": (TEXT, "a template's id (GET: also a built-in template's name)"),
    "group": (TEXT, "a group's id or name"),
    "ref": (TEXT, "a parser script's file name, e.g. my_parser.py (.py may be left out)"),
    "request_id": (TEXT, "the command's request_id"),
    "uuid": (DIGITS, "the device's uuid (its agent id)"),
}


def path_parameter(name: str) -> Schema:
    schema, description = PATH_PARAMETERS.get(name, (DIGITS, "an id"))
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


# ---------------------------------------------------------------- the endpoints


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One operation. ``answer`` names a schema (``"X[]"`` a list of them; ``""`` no body;
    ``"text"`` plain text) sent with ``status``; ``more`` adds other answers; ``body``
    names the request body's schema; ``errors`` adds error statuses to the usual ones."""

    method: str
    path: str
    summary: str
    answer: str = ""
    status: int = 200
    body: str | None = None
    auth: Auth = "token"
    params: tuple[Schema, ...] = ()
    more: tuple[tuple[int, str], ...] = ()
    errors: tuple[int, ...] = ()


CHANNELS = "/api/agents/{agent_id}/channels/{channel_name}"
MESSAGES = CHANNELS + "/messages"
V1 = "/api/v1"
DEVICE_PATH = V1 + "/devices/{uuid}"
EXECUTION_PATH = DEVICE_PATH + "/jobs/{job_id}"
INSTALLATION = "/api/apps/installations/{installation_id}"
E = Endpoint  # the tables below are long enough without the full name

SERVICE = [
    E("get", "/healthz", "Liveness and database check", "Health", auth="public"),
    E("get", "/metrics", "Prometheus metrics", "text", auth="public"),
    E("get", "/openapi.json", "This document", "OpenAPI", auth="public"),
    E("get", "/docs", "A page listing the endpoints", "html", auth="public"),
]

DATA = [
    E("get", "/api/me", "Who the token speaks for", "Me"),
    E(
        "get",
        "/api/agents",
        "Agents of the caller's organisation",
        "Agent[]",
        params=(query("kind", choice(AgentKind), "only agents of this kind"),),
    ),
    E(
        "post",
        "/api/agents",
        "Create a device, user or app agent; answers its first token (admin)",
        "CreatedAgent",
        201,
        body="NewAgent",
        auth="admin",
    ),
    E(
        "get",
        "/api/agents/{agent_id}/channels",
        "List an agent's channels",
        "Channel[]",
        params=(query("include_aggregate", BOOLEAN, "false leaves aggregates out"),),
    ),
    E("get", CHANNELS, "Get a channel with its aggregate", "Channel"),
    E(
        "post",
        CHANNELS,
        "Create a channel if missing (201; 200 if it existed)",
        "Channel",
        more=((201, "Channel"),),
        body="ChannelSettings",
    ),
    E(
        "put",
        CHANNELS,
        "Create a channel or update is_private and schemas (201 when created)",
        "Channel",
        more=((201, "Channel"),),
        body="ChannelSettings",
    ),
    E(
        "get",
        MESSAGES,
        "History, newest first",
        "Message[]",
        params=(*MESSAGE_PAGE, page("limit", 1, 1000, 50), FIELD_NAMES),
    ),
    E(
        "post",
        MESSAGES,
        "Publish a message; creates the channel if missing",
        "Message",
        body="Publish",
        errors=(422,),
    ),
    E(
        "get",
        MESSAGES + "/timeseries",
        "Named fields over time, oldest first",
        "Timeseries",
        params=(*MESSAGE_PAGE, page("limit", 1, 10_000, 500), FIELD_NAMES),
    ),
    E("get", MESSAGES + "/{message_id}", "One message", "Message"),
    E(
        "patch",
        MESSAGES + "/{message_id}",
        "Merge into one message's data",
        "Message",
        body="MessageEdit",
    ),
    E(
        "put",
        MESSAGES + "/{message_id}",
        "Replace one message's data",
        "Message",
        body="MessageEdit",
    ),
    E("delete", MESSAGES + "/{message_id}", "Delete one message", status=204),
    E("get", CHANNELS + "/aggregate", "Current state", "Aggregate"),
    E(
        "patch",
        CHANNELS + "/aggregate",
        "Merge-patch the state (RFC 7396); the body is the patch",
        "Aggregate",
        body="any",
        params=(query("replace", TEXT, "replace this dotted path's subtree instead"),),
        errors=(422,),
    ),
    E(
        "put",
        CHANNELS + "/aggregate",
        "Replace the state; the body is the new state",
        "Aggregate",
        body="any",
        errors=(422,),
    ),
    E(
        "post",
        "/api/agents/messages",
        "Publish many messages to many channels; each item succeeds or fails alone",
        "BatchResult",
        body="BatchMessages",
    ),
    E(
        "patch",
        "/api/agents/aggregates",
        "Merge-patch many aggregates; each item succeeds or fails alone",
        "BatchResult",
        body="BatchAggregates",
    ),
    E(
        "get",
        "/api/gateway",
        "The websocket gateway (live subscriptions); identify with a token in the "
        "IDENTIFY frame — frames in docs/api.md",
        "websocket",
        101,
        auth="public",
    ),
]

JOBS = [
    E(
        "post",
        V1 + "/device/register",
        "Register a device with a provisioning key; answers its API key (shown once)",
        "RegisteredDevice",
        201,
        body="Register",
        auth="public",
        errors=(401,),
    ),
    E(
        "get",
        V1 + "/devices",
        "Every device (operator)",
        "Device[]",
        auth="admin",
        params=(query("group", TEXT, "only this group's devices (id or name)"),),
    ),
    E("get", DEVICE_PATH, "One device (operator, or the device)", "Device", auth="device"),
    E(
        "get",
        DEVICE_PATH + "/jobs",
        "The device's executions, newest first",
        "Execution[]",
        auth="device",
        params=(*EXECUTION_QUERY, query("job", DIGITS, "only this job's")),
    ),
    E(
        "get",
        DEVICE_PATH + "/jobs/next",
        'Start the device\'s next queued execution, or {"message": "No pending jobs"} '
        "(the device only)",
        "NextJob",
        auth="device",
        params=(
            query(
                "wait",
                {"type": "number", "minimum": 0},
                "long-poll: seconds to wait for work (capped at 60)",
            ),
        ),
    ),
    E(
        "get",
        EXECUTION_PATH,
        "The device's latest attempt of a job",
        "Execution",
        auth="device",
    ),
    E(
        "patch",
        EXECUTION_PATH + "/status",
        "The device reports progress or a result",
        "Execution",
        body="StatusUpdate",
        auth="device",
        errors=(409,),
    ),
    E(
        "post",
        EXECUTION_PATH + "/cancel",
        "Cancel one device's execution (operator)",
        "Execution",
        body="StopExecution",
        auth="admin",
        errors=(409,),
    ),
    E(
        "post",
        EXECUTION_PATH + "/remove",
        "Remove one device's execution (operator)",
        "Execution",
        body="StopExecution",
        auth="admin",
        errors=(409,),
    ),
    E("get", V1 + "/provisioning-keys", "Provisioning keys", "ProvisioningKey[]", auth="admin"),
    E(
        "post",
        V1 + "/provisioning-keys",
        "Create a provisioning key (the secret is shown once)",
        "CreatedProvisioningKey",
        201,
        body="NewProvisioningKey",
        auth="admin",
    ),
    E(
        "delete",
        V1 + "/provisioning-keys/{key_id}",
        "Revoke a provisioning key",
        status=204,
        auth="admin",
    ),
    E("get", V1 + "/groups", "Device groups", "Group[]", auth="admin"),
    E(
        "post",
        V1 + "/groups",
        "Create a device group",
        "Group",
        201,
        body="NewGroup",
        auth="admin",
        errors=(409,),
    ),
    E("get", V1 + "/groups/{group}", "One group", "Group", auth="admin"),
    E("delete", V1 + "/groups/{group}", "Delete a group", status=204, auth="admin"),
    E(
        "post",
        V1 + "/groups/{group}/devices",
        "Add devices to a group",
        "Group",
        body="GroupMembers",
        auth="admin",
    ),
    E(
        "delete",
        V1 + "/groups/{group}/devices/{uuid}",
        "Remove a device from a group",
        "Group",
        auth="admin",
    ),
    E("get", V1 + "/jobs/templates", "Built-in and own templates", "Template[]", auth="admin"),
    E(
        "post",
        V1 + "/jobs/templates",
        "Create a template",
        "Template",
        201,
        body="TemplateInput",
        auth="admin",
        errors=(409,),
    ),
    E(
        "get",
        V1 + "/jobs/templates/{template_id}",
        "One template",
        "Template",
        auth="admin",
    ),
    E(
        "put",
        V1 + "/jobs/templates/{template_id}",
        "Replace a template (not a built-in one)",
        "Template",
        body="TemplateInput",
        auth="admin",
        errors=(409,),
    ),
    E(
        "delete",
        V1 + "/jobs/templates/{template_id}",
        "Delete a template (not a built-in one)",
        status=204,
        auth="admin",
    ),
    E(
        "post",
        V1 + "/jobs/execute",
        "Create a job from a template or a document, for devices, groups or all",
        "Job",
        201,
        body="Execute",
        auth="admin",
    ),
    E(
        "get",
        V1 + "/jobs/executions",
        "Executions across jobs, newest first",
        "Execution[]",
        auth="admin",
        params=(
            *EXECUTION_QUERY,
            query("job", DIGITS, "only this job's"),
            query("device", DIGITS, "only this device's"),
        ),
    ),
    E(
        "get",
        V1 + "/jobs",
        "Jobs, newest first",
        "Job[]",
        auth="admin",
        params=(
            query("status", choice(JobStatus), "only jobs in this state"),
            query("before", DIGITS, "only jobs older than this job id"),
            page("limit", 1, 500, 100),
        ),
    ),
    E("get", V1 + "/jobs/{job_id}", "One job with its counts", "Job", auth="admin"),
    E(
        "get",
        V1 + "/jobs/{job_id}/executions",
        "A job's executions",
        "Execution[]",
        auth="admin",
        params=(*EXECUTION_QUERY, query("device", DIGITS, "only this device's")),
    ),
    E(
        "post",
        V1 + "/jobs/{job_id}/cancel",
        "Cancel a job (force also ends executions in progress)",
        "Job",
        body="CancelJob",
        auth="admin",
        errors=(409,),
    ),
]

COMMANDS = [
    E(
        "post",
        "/api/commands",
        "Push a command to a device (a CommandMessage)",
        "CommandAccepted",
        202,
        body="CommandMessage",
        errors=(409, 422),
    ),
    E(
        "get",
        "/api/commands/{request_id}",
        "A command's status and history",
        "CommandWithHistory",
    ),
    E(
        "get",
        "/api/agents/{agent_id}/commands",
        "A device's commands, newest first",
        "ListedCommand[]",
        params=(
            query("status", choice(CommandStatus), "only commands with this status"),
            query("before", DIGITS, "only commands before this seq"),
            page("limit", 1, 500, 50),
        ),
    ),
    E("get", "/api/agents/{agent_id}/parser", "A device's parser settings", "DeviceParser"),
    E(
        "put",
        "/api/agents/{agent_id}/parser",
        "Set a device's uplink parser script and parser config",
        "DeviceParser",
        body="DeviceParserInput",
    ),
    E("get", "/api/parsers", "Parser scripts the organisation can use", "ParserScript[]"),
    E("get", "/api/parsers/{ref}", "One parser script, with its source", "ParserScriptSource"),
    E(
        "put",
        "/api/parsers/{ref}",
        "Upload a parser script; the body is its Python source (admin; 201 when new)",
        "ParserScript",
        more=((201, "ParserScript"),),
        body="python",
        auth="admin",
    ),
    E(
        "delete",
        "/api/parsers/{ref}",
        "Remove an uploaded parser script (admin)",
        status=204,
        auth="admin",
    ),
]

APPS = [
    E("get", "/api/apps", "The organisation's apps", "App[]", auth="admin"),
    E(
        "post",
        "/api/apps",
        "Deploy a new version of an app (created on its first deploy)",
        "DeployedApp",
        201,
        body="Deploy",
        auth="admin",
        errors=(422,),
    ),
    E(
        "get",
        "/api/apps/{app_id}",
        "One app with its latest version",
        "AppWithLatest",
        auth="admin",
    ),
    E(
        "delete",
        "/api/apps/{app_id}",
        "Remove an app (409 while installed)",
        status=204,
        auth="admin",
        errors=(409,),
    ),
    E(
        "get",
        "/api/apps/{app_id}/versions",
        "An app's versions, newest first",
        "AppVersion[]",
        auth="admin",
    ),
    E(
        "get",
        "/api/apps/{app_id}/installations",
        "An app's installations",
        "Installation[]",
        auth="admin",
        params=(query("agent_id", DIGITS, "only those on this agent"),),
    ),
    E(
        "post",
        "/api/apps/{app_id}/installations",
        "Install an app on a device (processor) or the organisation (integration)",
        "Installation",
        201,
        body="Install",
        auth="admin",
        errors=(422,),
    ),
    E(
        "get",
        "/api/apps/installations",
        "Installations",
        "Installation[]",
        auth="admin",
        params=(
            query("agent_id", DIGITS, "only those on this agent"),
            query("app_id", DIGITS, "only this app's"),
        ),
    ),
    E(
        "get",
        INSTALLATION,
        "One installation, with its ingestion credentials",
        "Installation",
        auth="admin",
    ),
    E(
        "patch",
        INSTALLATION,
        "A new deployment config (checked against the app's schema)",
        "Installation",
        body="InstallationUpdate",
        auth="admin",
        errors=(422,),
    ),
    E("delete", INSTALLATION, "Uninstall", status=204, auth="admin"),
    E(
        "post",
        INSTALLATION + "/invoke",
        "Run on_manual_invoke; with wait, answers the invocation once it ran (else 202)",
        "InvokeAnswer",
        body="Invoke",
        auth="admin",
        more=((202, "InvokeAnswer"),),
        params=(
            query(
                "wait",
                {"type": "integer", "minimum": 0, "maximum": 300},
                "seconds to wait for the invocation",
            ),
        ),
    ),
    E(
        "get",
        INSTALLATION + "/invocations",
        "The invocation log, newest first",
        "Invocation[]",
        auth="admin",
        params=(
            query("after", DIGITS, "only invocations newer than this id"),
            query("before", DIGITS, "only invocations older than this id"),
            query("event_id", TEXT, "only this event's"),
            page("limit", 1, 1000, 50),
        ),
    ),
    E(
        "get",
        INSTALLATION + "/dead-letters",
        "Events that failed every attempt",
        "DeadLetter[]",
        auth="admin",
    ),
    E(
        "post",
        INSTALLATION + "/dead-letters/{dead_letter_id}/retry",
        "Queue a dead letter's event again",
        "Queued",
        202,
        auth="admin",
    ),
    E(
        "delete",
        INSTALLATION + "/dead-letters/{dead_letter_id}",
        "Drop a dead letter",
        status=204,
        auth="admin",
    ),
    E(
        "post",
        "/api/ingestion/{installation_id}",
        "An integration's public ingestion URL: CIDR allow-list, HMAC signature, "
        "throttle, then token; runs on_ingestion_endpoint with the raw body",
        "Queued",
        202,
        body="bytes",
        auth="ingestion",
        errors=(429,),
    ),
]

AREAS: dict[str, list[Endpoint]] = {
    "data": DATA,
    "jobs": JOBS,
    "commands": COMMANDS,
    "apps": APPS,
    "service": SERVICE,
}
AREA_DOCS = {
    "data": "Agents, channels, messages and aggregates (docs/api.md)",
    "jobs": "Device jobs, devices, groups and provisioning keys (docs/jobs.md)",
    "commands": "Commands to devices and parser scripts (docs/commands.md)",
    "apps": "Cloud apps: deploy, install, invoke, ingest (docs/apps.md)",
    "service": "Health, metrics and this document (docs/operations.md)",
}
ENDPOINTS: list[Endpoint] = [endpoint for listed in AREAS.values() for endpoint in listed]

# ---------------------------------------------------------------- building the document

ERROR_MEANING = {
    400: "Bad input: malformed JSON, a wrong type or a bad parameter",
    401: "No credentials, or unknown, revoked or expired ones",
    403: "Known credentials that may not do this",
    404: "Not found, or in another organisation",
    409: "A conflict: an illegal state change, a version mismatch or a name taken",
    413: "The body is over the size limit (also after gzip)",
    422: "Well-formed, but rejected by a schema",
    429: "Throttled; Retry-After says how many seconds to wait",
}
SECURITY: dict[Auth, list[dict[str, list[str]]]] = {
    "token": [{"bearer": []}],
    "admin": [{"bearer": []}],
    "device": [{"deviceKey": []}, {"bearer": []}],
    "public": [],
    "ingestion": [{"bearer": []}, {"miniToken": []}, {"tokenQuery": []}],
}
SECURITY_SCHEMES: dict[str, Schema] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An agent's token (an admin's for operator endpoints)",
    },
    "deviceKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Device-API-Key",
        "description": "A device's API key (the same secret as its bearer token)",
    },
    "miniToken": {
        "type": "apiKey",
        "in": "header",
        "name": "x-mini-token",
        "description": "An integration's mini-token, where its config allows one",
    },
    "tokenQuery": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "An integration's ingestion token as a query parameter",
    },
}
ORGANISATION_PARAMETER: Schema = {
    "name": "X-Doover-Organisation",
    "in": "header",
    "required": False,
    "schema": DIGITS,
    "description": "if sent, must be the token's organisation (else 403)",
}
BODIES: dict[str, tuple[str, Schema]] = {
    "any": ("application/json", ANY),
    "python": ("text/x-python", {"type": "string", "description": "the script's source"}),
    "bytes": ("*/*", {"description": "any body, passed to the app base64-wrapped"}),
}
OPTIONAL_BODIES = {
    "ChannelSettings",
    "NewProvisioningKey",
    "StopExecution",
    "CancelJob",
    "Install",
    "Invoke",
}
"""Request bodies that may be left out (an empty body counts as ``{}``)."""
ANSWERS: dict[str, tuple[str, Schema]] = {
    "text": ("text/plain", TEXT),
    "html": ("text/html", TEXT),
    "OpenAPI": ("application/json", OBJECT),
}


def _content(shape: str) -> dict[str, Any]:
    if shape in ANSWERS:
        media, schema = ANSWERS[shape]
        return {media: {"schema": schema}}
    schema = ref(shape.removesuffix("[]"))
    if shape.endswith("[]"):
        schema = array(schema)
    return {"application/json": {"schema": schema}}


def _answer(status: int, shape: str) -> dict[str, Any]:
    if shape == "websocket":
        return {"description": "Switching Protocols: the connection is now a websocket"}
    if not shape:
        return {"description": "No Content" if status == 204 else "OK"}
    return {"description": "OK", "content": _content(shape)}


def error_statuses(endpoint: Endpoint) -> list[int]:
    """The error statuses an endpoint may answer: the usual ones for its kind plus its own."""
    if not endpoint.path.startswith("/api/") or endpoint.answer == "websocket":
        return []
    found = set(endpoint.errors)
    if endpoint.auth != "public":
        found.add(401)
    if endpoint.auth not in ("public", "ingestion"):
        found.add(403)
    if "{" in endpoint.path:
        found.add(404)
    if endpoint.body is not None or endpoint.params or "{" in endpoint.path:
        found.add(400)
    if endpoint.body is not None:
        found.add(413)
    return sorted(found)


def _responses(endpoint: Endpoint) -> dict[str, Any]:
    responses: dict[str, Any] = {str(endpoint.status): _answer(endpoint.status, endpoint.answer)}
    for status, shape in endpoint.more:
        responses[str(status)] = _answer(status, shape)
    for status in error_statuses(endpoint):
        responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    if endpoint.path.startswith("/api/") and endpoint.answer != "websocket":
        responses["5XX"] = {"$ref": "#/components/responses/Unavailable"}
    return responses


def _request_body(name: str) -> dict[str, Any]:
    media, schema = BODIES.get(name, ("application/json", ref(name)))
    return {"required": name not in OPTIONAL_BODIES, "content": {media: {"schema": schema}}}


def _operation(endpoint: Endpoint, area: str) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id(endpoint),
        "summary": endpoint.summary,
        "tags": [area],
        "responses": _responses(endpoint),
        "security": SECURITY[endpoint.auth],
    }
    params = [path_parameter(part[1:-1]) for part in endpoint.path.split("/") if part[:1] == "{"]
    params += list(endpoint.params)
    if endpoint.auth in ("token", "admin", "device"):
        params.append({"$ref": "#/components/parameters/Organisation"})
    if params:
        operation["parameters"] = params
    if endpoint.body is not None:
        operation["requestBody"] = _request_body(endpoint.body)
    return operation


def operation_id(endpoint: Endpoint) -> str:
    words = [part.strip("{}") for part in endpoint.path.split("/") if part and part != "api"]
    return endpoint.method + "_" + "_".join(words).replace("-", "_").replace(".", "_")


def _components() -> dict[str, Any]:
    responses: dict[str, Any] = {
        f"E{status}": {
            "description": meaning,
            "content": {"application/json": {"schema": ref("Error")}},
        }
        for status, meaning in ERROR_MEANING.items()
    }
    responses["E429"]["headers"] = {
        "Retry-After": {"schema": INTEGER, "description": "seconds to wait"}
    }
    responses["Unavailable"] = {
        "description": "The database or the bus failed (503: retry later) or an internal error",
        "content": {"application/json": {"schema": ref("Error")}},
    }
    return {
        "schemas": SCHEMAS,
        "responses": responses,
        "parameters": {"Organisation": ORGANISATION_PARAMETER},
        "securitySchemes": SECURITY_SCHEMES,
    }


def spec() -> dict[str, Any]:
    """The document, built afresh (a caller may change its copy)."""
    paths: dict[str, dict[str, Any]] = {}
    for area, endpoints in AREAS.items():
        for endpoint in endpoints:
            paths.setdefault(endpoint.path, {})[endpoint.method] = _operation(endpoint, area)
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "fleetcloud",
            "version": __version__,
            "description": "Errors are JSON: "
            '{"error": "NotFound", "message": "…", "status": 404}. Ids are 64-bit '
            "integers written as strings. Request bodies may be gzip-compressed.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "tags": [{"name": area, "description": AREA_DOCS[area]} for area in AREAS],
        "paths": paths,
        "components": _components(),
    }
    return copy.deepcopy(document)  # the tables above are shared, never handed out


async def openapi_json(request: Request) -> Response:
    return JSONResponse(spec())


WHO = {
    "token": "token",
    "admin": "admin token",
    "device": "device key or token",
    "public": "—",
    "ingestion": "ingestion token",
}


async def docs_page(request: Request) -> Response:
    rows = "".join(
        f"<tr><td><code>{e.method.upper()}</code></td><td><code>{escape(e.path)}</code></td>"
        f"<td>{escape(WHO[e.auth])}</td><td>{escape(e.summary)}</td></tr>"
        for e in ENDPOINTS
    )
    return HTMLResponse(
        "<!doctype html><html lang=en><meta charset=utf-8><title>fleetcloud API</title>"
        "<style>body{font-family:system-ui;margin:2rem}td{padding:.2rem .8rem}</style>"
        "<h1>fleetcloud HTTP API</h1><p>Machine-readable: "
        "<a href=/openapi.json>/openapi.json</a> (OpenAPI 3.1). Send "
        "<code>Authorization: Bearer &lt;token&gt;</code> on <code>/api</code> calls; "
        "devices may send <code>X-Device-API-Key</code> to the jobs API "
        "(<code>/api/v1</code>).</p>"
        "<table><tr><th>method</th><th>path</th><th>credentials</th><th>what</th></tr>"
        f"{rows}</table></html>"
    )
