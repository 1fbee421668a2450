"""The jobs API under ``/api/v1`` (seed 003's paths and JSON shapes).

Operators call it with their admin token (``Authorization: Bearer``); devices with their
API key (``X-Device-API-Key``), which is the same token the data API takes. A device
sees and moves only its own executions (another device's answer 404, as does anything
in another organisation); operator calls by a device answer 403.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from fleetcloud.api.http import JSONResponse, query_int, read_body, read_object
from fleetcloud.core.errors import BadRequest, Forbidden, NotFound
from fleetcloud.core.jsonish import parse_body, to_id
from fleetcloud.core.types import AgentKind, Principal, Role
from fleetcloud.jobs import devices, repo, requests
from fleetcloud.jobs.model import NO_PENDING_JOBS, id_in, next_job_json
from fleetcloud.jobs.repo import ExecutionFilter
from fleetcloud.jobs.service import JobsService, jobs_service
from fleetcloud.jobs.states import ExecutionStatus, JobStatus, parse_status
from fleetcloud.jobs.templates import check_template, parse_parameter_specs
from fleetcloud.platform import Platform

BASE = "/api/v1"
DEVICE_KEY_HEADER = "x-device-api-key"
MAX_PAGE = 500


# ---------------------------------------------------------------- who is calling


def platform_of(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


async def caller(request: Request) -> tuple[JobsService, Principal]:
    """The caller, from ``X-Device-API-Key`` or else ``Authorization: Bearer``."""
    platform = platform_of(request)
    key = request.headers.get(DEVICE_KEY_HEADER, "").strip()
    if key:
        principal = await platform.auth.device_key(key)
    else:
        principal = await platform.auth.authenticate(request)
    return jobs_service(platform), principal


async def operator(request: Request) -> tuple[JobsService, Principal]:
    service, principal = await caller(request)
    if not principal.is_admin:
        raise Forbidden("only an organisation admin (operator) may do this")
    return service, principal


def path_id(request: Request, name: str, what: str) -> int:
    raw = str(request.path_params[name])
    value = id_in(raw)
    if value is None:
        raise NotFound(f"{what} {raw} does not exist")
    return value


async def device_of(request: Request, principal: Principal) -> int:
    """The ``{uuid}`` in the path, if the caller may see that device (404 otherwise)."""
    device_id = path_id(request, "uuid", "device")
    if principal.role is not Role.ADMIN and principal.agent_id != device_id:
        raise NotFound(f"device {device_id} does not exist")
    agent = await platform_of(request).auth.agent(principal, device_id)  # cached
    if agent.kind is not AgentKind.DEVICE:
        raise NotFound(f"device {device_id} does not exist")
    return device_id


async def optional_body(request: Request) -> dict[str, Any]:
    raw = await read_body(request)
    if not raw.strip():
        return {}
    body = parse_body(raw)
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def limit_of(request: Request) -> int:
    return query_int(request, "limit", 100, low=1, high=MAX_PAGE) or 100


def optional_id(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    return None if not raw else to_id(raw, name)


# ---------------------------------------------------------------- devices


async def register(request: Request) -> Response:
    """``POST /device/register``: a provisioning key buys a device and its API key."""
    body = await read_object(request)
    secret = body.get("provisioning_key")
    if not isinstance(secret, str) or not secret.strip():
        raise BadRequest('send {"provisioning_key": "…", "name"?: "…"}')
    name = body.get("name")
    if name is not None:
        name = requests.name(name, "name")
    platform = platform_of(request)
    agent, api_key = await platform.store.write(devices.register_device(secret.strip(), name))
    return JSONResponse(
        {
            "uuid": str(agent.id),
            "agent_id": str(agent.id),
            "name": agent.name,
            "organisation_id": str(agent.organisation_id),
            "api_key": api_key,
            "created_at": agent.created_ms,
        },
        status_code=201,
    )


async def list_devices(request: Request) -> Response:
    service, principal = await operator(request)
    group = request.query_params.get("group")
    group_id = None
    if group:
        found = await service.store.read(devices.get_group(principal.organisation_id, group))
        group_id = found.id
    listed = await service.store.read(devices.list_devices(principal.organisation_id, group_id))
    return JSONResponse([device.to_json() for device in listed])


async def get_device(request: Request) -> Response:
    service, principal = await caller(request)
    device_id = await device_of(request, principal)
    device = await service.store.read(devices.get_device(principal.organisation_id, device_id))
    return JSONResponse(device.to_json())


async def next_job(request: Request) -> Response:
    """``GET /devices/{uuid}/jobs/next[?wait=SECONDS]``: start the next execution."""
    service, principal = await caller(request)
    device_id = await device_of(request, principal)
    if principal.agent_id != device_id:
        raise Forbidden(
            "jobs/next starts the execution, so only the device itself may call it; "
            "operators read GET /devices/{uuid}/jobs"
        )
    found = await service.next_job(device_id, wait_of(request), request.is_disconnected)
    if found is None:
        return JSONResponse(NO_PENDING_JOBS)
    execution, document = found
    return JSONResponse(next_job_json(execution, document))


def wait_of(request: Request) -> float:
    raw = request.query_params.get("wait")
    if not raw:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        raise BadRequest(f"wait must be a number of seconds, not {raw!r}") from None
    if not wait >= 0:
        raise BadRequest("wait must be a number of seconds, 0 or more")
    return wait


async def device_history(request: Request) -> Response:
    service, principal = await caller(request)
    device_id = await device_of(request, principal)
    query = execution_filter(request, principal, device_id=device_id)
    found = await service.store.read(repo.list_executions(query))
    return JSONResponse([execution.to_json() for execution in found])


async def get_execution(request: Request) -> Response:
    service, principal = await caller(request)
    device_id = await device_of(request, principal)
    job_id = path_id(request, "job_id", "job")
    execution = await service.store.read(
        repo.latest_execution(principal.organisation_id, device_id, job_id)
    )
    return JSONResponse(execution.to_json())


async def update_status(request: Request) -> Response:
    """``PATCH /devices/{uuid}/jobs/{job_id}/status``: the device reports."""
    service, principal = await caller(request)
    device_id = await device_of(request, principal)
    job_id = path_id(request, "job_id", "job")
    update = requests.parse_status_update(await read_object(request))
    execution = await service.update_status(principal, device_id, job_id, update)
    return JSONResponse(execution.to_json())


async def stop_execution(request: Request) -> Response:
    """``POST …/jobs/{job_id}/cancel`` → CANCELED, ``…/remove`` → REMOVED (operators)."""
    service, principal = await operator(request)
    device_id = await device_of(request, principal)
    job_id = path_id(request, "job_id", "job")
    body = await optional_body(request)
    target = ExecutionStatus.CANCELED
    if request.url.path.endswith("/remove"):
        target = ExecutionStatus.REMOVED
    execution = await service.stop_execution(
        principal, device_id, job_id, target, requests.flag(body, "force")
    )
    return JSONResponse(execution.to_json())


# ---------------------------------------------------------------- provisioning keys


async def create_key(request: Request) -> Response:
    service, principal = await operator(request)
    label, ttl, max_uses = requests.parse_key_request(await optional_body(request))
    key, secret = await service.store.write(
        devices.create_provisioning_key(
            principal.organisation_id, label=label, ttl_seconds=ttl, max_uses=max_uses
        )
    )
    return JSONResponse({**key.to_json(), "provisioning_key": secret}, status_code=201)


async def list_keys(request: Request) -> Response:
    service, principal = await operator(request)
    found = await service.store.read(devices.list_provisioning_keys(principal.organisation_id))
    return JSONResponse([key.to_json() for key in found])


async def delete_key(request: Request) -> Response:
    service, principal = await operator(request)
    key_id = path_id(request, "key_id", "provisioning key")
    await service.store.write(devices.delete_provisioning_key(principal.organisation_id, key_id))
    return Response(status_code=204)


# ---------------------------------------------------------------- groups


async def create_group(request: Request) -> Response:
    service, principal = await operator(request)
    name, description, members = requests.parse_group(await read_object(request))
    group = await service.store.write(
        devices.create_group(principal.organisation_id, name, description, members)
    )
    return JSONResponse(group.to_json(), status_code=201)


async def list_groups(request: Request) -> Response:
    service, principal = await operator(request)
    found = await service.store.read(devices.list_groups(principal.organisation_id))
    return JSONResponse([group.to_json() for group in found])


async def get_group(request: Request) -> Response:
    service, principal = await operator(request)
    ref = str(request.path_params["group"])
    group = await service.store.read(devices.get_group(principal.organisation_id, ref))
    return JSONResponse(group.to_json())


async def delete_group(request: Request) -> Response:
    service, principal = await operator(request)
    ref = str(request.path_params["group"])
    await service.store.write(devices.delete_group(principal.organisation_id, ref))
    return Response(status_code=204)


async def add_members(request: Request) -> Response:
    service, principal = await operator(request)
    body = await read_object(request)
    members = requests.ids(body.get("devices"), "devices")
    ref = str(request.path_params["group"])
    group = await service.store.write(devices.add_members(principal.organisation_id, ref, members))
    return JSONResponse(group.to_json())


async def remove_member(request: Request) -> Response:
    service, principal = await operator(request)
    ref = str(request.path_params["group"])
    device_id = path_id(request, "uuid", "device")
    group = await service.store.write(
        devices.remove_member(principal.organisation_id, ref, device_id)
    )
    return JSONResponse(group.to_json())


# ---------------------------------------------------------------- templates


async def list_templates(request: Request) -> Response:
    service, principal = await operator(request)
    found = await service.store.read(repo.list_templates(principal.organisation_id))
    return JSONResponse([template.to_json() for template in found])


async def get_template(request: Request) -> Response:
    service, principal = await operator(request)
    ref = str(request.path_params["template_id"])
    template = await service.store.read(repo.find_template(principal.organisation_id, ref))
    return JSONResponse(template.to_json())


async def save_template(request: Request) -> Response:
    """POST creates a template; PUT replaces one (built-in ones are read-only)."""
    service, principal = await operator(request)
    data = requests.parse_template(await read_object(request))
    specs = parse_parameter_specs(data.parameters)
    check_template(data.document, specs)
    template_id = None
    if request.method == "PUT":
        template_id = path_id(request, "template_id", "template")
    template = await service.store.write(
        repo.save_template(principal.organisation_id, data, specs, service.clock(), template_id)
    )
    return JSONResponse(template.to_json(), status_code=201 if template_id is None else 200)


async def delete_template(request: Request) -> Response:
    service, principal = await operator(request)
    template_id = path_id(request, "template_id", "template")
    await service.store.write(repo.delete_template(principal.organisation_id, template_id))
    return Response(status_code=204)


# ---------------------------------------------------------------- jobs


async def execute(request: Request) -> Response:
    """``POST /jobs/execute``: create a job from a template or a document."""
    service, principal = await operator(request)
    job = await service.execute(principal, requests.parse_execute(await read_object(request)))
    return JSONResponse(job.to_json(), status_code=201)


async def list_jobs(request: Request) -> Response:
    service, principal = await operator(request)
    raw = request.query_params.get("status")
    try:
        status = JobStatus(raw.upper()) if raw else None
    except ValueError:
        raise BadRequest("status must be IN_PROGRESS, COMPLETED or CANCELED") from None
    found = await service.store.read(
        repo.list_jobs(
            principal.organisation_id, status, limit_of(request), optional_id(request, "before")
        )
    )
    return JSONResponse([job.to_json() for job in found])


async def get_job(request: Request) -> Response:
    service, principal = await operator(request)
    job_id = path_id(request, "job_id", "job")
    job = await service.store.read(repo.require_job(principal.organisation_id, job_id))
    return JSONResponse(job.to_json())


def execution_filter(
    request: Request,
    principal: Principal,
    *,
    job_id: int | None = None,
    device_id: int | None = None,
) -> ExecutionFilter:
    raw_status = request.query_params.get("status")
    latest = request.query_params.get("latest", "false").lower() in ("1", "true", "yes")
    return ExecutionFilter(
        organisation_id=principal.organisation_id,
        job_id=job_id if job_id is not None else optional_id(request, "job"),
        device_id=device_id if device_id is not None else optional_id(request, "device"),
        status=parse_status(raw_status) if raw_status else None,
        latest_only=latest,
        before=optional_id(request, "before"),
        limit=limit_of(request),
    )


async def list_executions(request: Request) -> Response:
    """``GET /jobs/executions?status=&device=&job=&latest=&before=&limit=``."""
    service, principal = await operator(request)
    found = await service.store.read(repo.list_executions(execution_filter(request, principal)))
    return JSONResponse([execution.to_json() for execution in found])


async def job_executions(request: Request) -> Response:
    service, principal = await operator(request)
    job_id = path_id(request, "job_id", "job")
    await service.store.read(repo.require_job(principal.organisation_id, job_id))
    query = execution_filter(request, principal, job_id=job_id)
    found = await service.store.read(repo.list_executions(query))
    return JSONResponse([execution.to_json() for execution in found])


async def cancel_job(request: Request) -> Response:
    """``POST /jobs/{job_id}/cancel`` ``{"force"?: bool, "reason"?: str}``."""
    service, principal = await operator(request)
    job_id = path_id(request, "job_id", "job")
    body = await optional_body(request)
    reason = requests.label(body.get("reason"), "reason") or None
    job = await service.cancel(principal, job_id, requests.flag(body, "force"), reason)
    return JSONResponse(job.to_json())


def routes() -> list[BaseRoute]:
    device = BASE + "/devices/{uuid}"
    execution = device + "/jobs/{job_id}"
    return [
        Route(BASE + "/device/register", register, methods=["POST"]),
        Route(BASE + "/devices", list_devices, methods=["GET"]),
        Route(device, get_device, methods=["GET"]),
        Route(device + "/jobs", device_history, methods=["GET"]),
        Route(device + "/jobs/next", next_job, methods=["GET"]),
        Route(execution, get_execution, methods=["GET"]),
        Route(execution + "/status", update_status, methods=["PATCH"]),
        Route(execution + "/cancel", stop_execution, methods=["POST"]),
        Route(execution + "/remove", stop_execution, methods=["POST"]),
        Route(BASE + "/provisioning-keys", list_keys, methods=["GET"]),
        Route(BASE + "/provisioning-keys", create_key, methods=["POST"]),
        Route(BASE + "/provisioning-keys/{key_id}", delete_key, methods=["DELETE"]),
        Route(BASE + "/groups", list_groups, methods=["GET"]),
        Route(BASE + "/groups", create_group, methods=["POST"]),
        Route(BASE + "/groups/{group}", get_group, methods=["GET"]),
        Route(BASE + "/groups/{group}", delete_group, methods=["DELETE"]),
        Route(BASE + "/groups/{group}/devices", add_members, methods=["POST"]),
        Route(BASE + "/groups/{group}/devices/{uuid}", remove_member, methods=["DELETE"]),
        Route(BASE + "/jobs/templates", list_templates, methods=["GET"]),
        Route(BASE + "/jobs/templates", save_template, methods=["POST"]),
        Route(BASE + "/jobs/templates/{template_id}", get_template, methods=["GET"]),
        Route(BASE + "/jobs/templates/{template_id}", save_template, methods=["PUT"]),
        Route(BASE + "/jobs/templates/{template_id}", delete_template, methods=["DELETE"]),
        Route(BASE + "/jobs/execute", execute, methods=["POST"]),
        Route(BASE + "/jobs/executions", list_executions, methods=["GET"]),
        Route(BASE + "/jobs", list_jobs, methods=["GET"]),
        Route(BASE + "/jobs/{job_id}", get_job, methods=["GET"]),
        Route(BASE + "/jobs/{job_id}/executions", job_executions, methods=["GET"]),
        Route(BASE + "/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    ]
