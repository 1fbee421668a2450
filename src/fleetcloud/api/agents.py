"""Agents of the caller's organisation: who am I, list them, add devices and users."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from fleetcloud.api.channels import caller
from fleetcloud.api.http import JSONResponse, read_object
from fleetcloud.core.errors import BadRequest, Forbidden
from fleetcloud.core.types import Agent, AgentKind, Principal, Role
from fleetcloud.store import agents as repo

CREATABLE = {AgentKind.DEVICE: Role.DEVICE, AgentKind.USER: Role.ADMIN, AgentKind.APP: Role.DEVICE}


def agent_json(agent: Agent) -> dict[str, object]:
    return {
        "id": str(agent.id),
        "organisation_id": str(agent.organisation_id),
        "kind": agent.kind.value,
        "name": agent.name,
        "created_ms": agent.created_ms,
    }


async def whoami(request: Request) -> Response:
    _, principal = await caller(request)
    return JSONResponse(
        {
            "agent_id": str(principal.agent_id),
            "organisation_id": str(principal.organisation_id),
            "role": principal.role.value,
        }
    )


async def list_agents(request: Request) -> Response:
    platform, principal = await caller(request)
    kind_name = request.query_params.get("kind")
    try:
        kind = AgentKind(kind_name) if kind_name else None
    except ValueError as exc:
        raise BadRequest(f"kind must be one of {', '.join(k.value for k in AgentKind)}") from exc
    found = await platform.store.read(repo.list_agents(principal.organisation_id, kind))
    return JSONResponse([agent_json(agent) for agent in found])


async def create_agent(request: Request) -> Response:
    """Admins add a device, user or app agent and get its first token (shown once)."""
    platform, principal = await caller(request)
    if not principal.is_admin:
        raise Forbidden("only an organisation admin may create agents")
    body = await read_object(request)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("name must be a non-empty string")
    try:
        kind = AgentKind(body.get("kind", "device"))
    except ValueError as exc:
        raise BadRequest("kind must be device, user or app") from exc
    if kind not in CREATABLE:
        raise BadRequest("kind must be device, user or app")
    agent = await platform.store.write(repo.create_agent(principal.organisation_id, kind, name))
    role = CREATABLE[kind]
    token = await platform.store.write(
        repo.create_token(Principal(agent.id, agent.organisation_id, role), label="created")
    )
    return JSONResponse({**agent_json(agent), "agent_id": str(agent.id), "token": token}, 201)
