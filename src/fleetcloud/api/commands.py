"""The commands API: push commands, follow their lifecycle, manage parser scripts.

::

    POST   /api/commands                       push a command (a CommandMessage as JSON) → 202
    GET    /api/commands/{request_id}          its status and history
    GET    /api/agents/{agent_id}/commands     a device's commands, newest first
    GET    /api/agents/{agent_id}/parser       the device's parser settings
    PUT    /api/agents/{agent_id}/parser       {"parser_script_ref"?, "config"?}
    GET    /api/parsers                        the scripts the organisation can use
    GET    /api/parsers/{ref}                  one script, with its source
    PUT    /api/parsers/{ref}                  upload a script (the body is the source)
    DELETE /api/parsers/{ref}                  remove an uploaded script

Who may do what: commands and device settings need write access to the device (an
admin, the device itself, or an app invocation scoped to it); a caller that is not an
admin may only send MQTT commands to topics inside the device's own namespace
(``fleetcloud/<agent_id>/…``). Parser scripts are code the server runs: only admins
upload or delete them. Anything in another organisation is a 404.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from fleetcloud.api.auth import require_write
from fleetcloud.api.channels import caller
from fleetcloud.api.http import JSONResponse, query_int, read_body, read_json, read_object
from fleetcloud.commands import lifecycle
from fleetcloud.commands.core.models import CommandMessage, CommandStatus
from fleetcloud.commands.delivery import load_settings, save_settings
from fleetcloud.commands.scripts import (
    ParserLibrary,
    check_source,
    delete_script,
    normalise_ref,
    put_script,
)
from fleetcloud.commands.service import PusherService
from fleetcloud.connectors.topics import owns
from fleetcloud.core.errors import BadRequest, Conflict, Forbidden, NotFound
from fleetcloud.core.jsonish import to_id
from fleetcloud.core.types import Agent, AgentKind, Principal
from fleetcloud.platform import Platform

MAX_PAGE = 500


async def _device(platform: Platform, principal: Principal, raw_id: object) -> Agent:
    agent = await platform.auth.agent(principal, to_id(raw_id, "device_id"))
    if agent.kind is not AgentKind.DEVICE:
        raise NotFound(f"agent {agent.id} is not a device")
    require_write(principal, agent)
    return agent


def _check_topic(principal: Principal, agent: Agent, command: CommandMessage) -> None:
    topic = command.metadata.get("topic")
    if principal.is_admin or command.protocol != "mqtt" or topic is None:
        return
    if not owns(agent.id, str(topic)):
        raise Forbidden(f"metadata.topic must be under fleetcloud/{agent.id}/ for this token")


async def push(request: Request) -> Response:
    platform, principal = await caller(request)
    command = CommandMessage.from_dict(await read_json(request))
    agent = await _device(platform, principal, command.device_id)
    _check_topic(principal, agent, command)
    pusher = PusherService(platform=platform, author_id=principal.agent_id)
    stored = await pusher.enqueue(command)
    if stored.organisation_id != principal.organisation_id:
        raise Conflict(f"request_id {command.request_id!r} is already in use")
    body = {"request_id": stored.request_id, "status": stored.status.value}
    return JSONResponse(body, status_code=202)


async def get_command(request: Request) -> Response:
    platform, principal = await caller(request)
    request_id = request.path_params["request_id"]
    command = await platform.store.read(lifecycle.get(request_id))
    if command is None or command.organisation_id != principal.organisation_id:
        raise NotFound(f"command {request_id!r} does not exist")
    await _device(platform, principal, command.agent_id)
    history = await platform.store.read(lifecycle.history(request_id))
    return JSONResponse({**command.to_json(), "history": [h.to_json() for h in history]})


async def list_commands(request: Request) -> Response:
    platform, principal = await caller(request)
    agent = await _device(platform, principal, request.path_params["agent_id"])
    status = request.query_params.get("status")
    if status is not None and status not in CommandStatus.__members__:
        raise BadRequest(f"status must be one of {', '.join(CommandStatus.__members__)}")
    limit = query_int(request, "limit", 50, low=1, high=MAX_PAGE) or 50
    found = await platform.store.read(
        lifecycle.list_for_device(
            agent.id, limit=limit, before_seq=query_int(request, "before"), status=status
        )
    )
    return JSONResponse([{**c.to_json(), "seq": str(c.seq)} for c in found])


# ---------------------------------------------------------------- device parser settings


async def get_device_parser(request: Request) -> Response:
    platform, principal = await caller(request)
    agent = await _device(platform, principal, request.path_params["agent_id"])
    settings = (await platform.store.read(load_settings([agent.id])))[agent.id]
    return JSONResponse(settings.to_json())


async def put_device_parser(request: Request) -> Response:
    platform, principal = await caller(request)
    agent = await _device(platform, principal, request.path_params["agent_id"])
    body = await read_object(request)
    ref = body.get("parser_script_ref")
    if ref is not None:
        if not isinstance(ref, str):
            raise BadRequest("parser_script_ref must be a string or null")
        ref = normalise_ref(ref)
    config = body.get("config", {})
    if not isinstance(config, dict):
        raise BadRequest("config must be a JSON object")
    await platform.store.write(save_settings(agent.id, ref, config))
    settings = (await platform.store.read(load_settings([agent.id])))[agent.id]
    return JSONResponse(settings.to_json())


# ---------------------------------------------------------------- parser scripts


def _library(platform: Platform) -> ParserLibrary:
    return ParserLibrary(platform.store)


def _require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("only an organisation admin may change parser scripts")


async def list_parsers(request: Request) -> Response:
    platform, principal = await caller(request)
    scripts = await _library(platform).available(principal.organisation_id)
    return JSONResponse([script.to_json() for script in scripts])


async def get_parser(request: Request) -> Response:
    platform, principal = await caller(request)
    ref = normalise_ref(request.path_params["ref"])
    script = await _library(platform).resolve(principal.organisation_id, ref)
    return JSONResponse(script.to_json(with_source=True))


async def put_parser(request: Request) -> Response:
    platform, principal = await caller(request)
    _require_admin(principal)
    ref = normalise_ref(request.path_params["ref"])
    source = check_source(await read_body(request), ref)
    script = await platform.store.write(
        put_script(principal.organisation_id, ref, source, principal.agent_id)
    )
    return JSONResponse(script.to_json(), status_code=201 if script.version == 1 else 200)


async def delete_parser(request: Request) -> Response:
    platform, principal = await caller(request)
    _require_admin(principal)
    ref = normalise_ref(request.path_params["ref"])
    if not await platform.store.write(delete_script(principal.organisation_id, ref)):
        raise NotFound(f"no uploaded parser script {ref!r}")
    return Response(status_code=204)


def routes() -> list[BaseRoute]:
    return [
        Route("/api/commands", push, methods=["POST"]),
        Route("/api/commands/{request_id}", get_command, methods=["GET"]),
        Route("/api/agents/{agent_id}/commands", list_commands, methods=["GET"]),
        Route("/api/agents/{agent_id}/parser", get_device_parser, methods=["GET"]),
        Route("/api/agents/{agent_id}/parser", put_device_parser, methods=["PUT"]),
        Route("/api/parsers", list_parsers, methods=["GET"]),
        Route("/api/parsers/{ref}", get_parser, methods=["GET"]),
        Route("/api/parsers/{ref}", put_parser, methods=["PUT"]),
        Route("/api/parsers/{ref}", delete_parser, methods=["DELETE"]),
    ]
