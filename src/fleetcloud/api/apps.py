"""The apps API: deploy apps, install them, invoke them, read what they did.

Everything under ``/api/apps`` takes an organisation admin's token. The ingestion
endpoint ``POST /api/ingestion/{installation_id}`` is public: an integration's own checks
(CIDR allow-list, HMAC signature, throttle, token — ``apps.ingestion``) decide.

Deploy (``POST /api/apps``) takes JSON: ``{"doover_config": {…the whole
doover_config.json…}, "app"?: "<name in it>", "package": "<package.zip in base64>"}``.
See docs/apps.md for every endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from fleetcloud.api.auth import ROLE_GUARDS
from fleetcloud.api.http import JSONResponse, query_int, read_body, read_object
from fleetcloud.apps import repo
from fleetcloud.apps.dispatcher import wake
from fleetcloud.apps.guard import check_request
from fleetcloud.apps.ingestion import IngestionGate, IngestionThrottled, wrap_body
from fleetcloud.apps.installations import check_agent, check_deployment
from fleetcloud.apps.model import Installation
from fleetcloud.apps.packaging import NAME, inspect_package, read_manifest
from fleetcloud.apps.repo import InstallRequest, new_delivery
from fleetcloud.apps.settings import AppsSettings
from fleetcloud.core.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge
from fleetcloud.core.ids import new_id
from fleetcloud.core.jsonish import parse_body, to_id
from fleetcloud.core.types import Principal, Role
from fleetcloud.platform import Platform
from fleetcloud.store.agents import get_organisation, now_ms

ROLE_GUARDS[Role.APP_INVOCATION] = check_request  # the invoking-channel rule
MAX_WAIT_SECONDS = 300
WAIT_POLL_SECONDS = 0.05
CREDENTIAL_HEADERS = {"authorization", "x-mini-token", "cookie"}


@functools.cache
def settings() -> AppsSettings:
    """The runtime's settings, read from the environment once."""
    return AppsSettings()


def platform_of(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


async def admin(request: Request) -> tuple[Platform, Principal]:
    platform = platform_of(request)
    principal = await platform.auth.authenticate(request)
    if not principal.is_admin:
        raise Forbidden("only an organisation admin may manage apps")
    return platform, principal


def path_id(request: Request, name: str) -> int:
    return to_id(request.path_params[name], name)


# ---------------------------------------------------------------- apps


async def list_apps(request: Request) -> Response:
    platform, principal = await admin(request)
    apps = await platform.store.read(repo.list_apps(principal.organisation_id))
    return JSONResponse([app.to_json() for app in apps])


async def deploy(request: Request) -> Response:
    """A new version of an app (the app is created on its first deploy)."""
    platform, principal = await admin(request)
    body = await _upload(request)
    manifest = read_manifest(body.get("doover_config"), body.get("app"))
    encoded = body.get("package")
    if not isinstance(encoded, str):
        raise BadRequest("package must be the package.zip in base64")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"package is not valid base64: {exc}") from exc
    limit = settings().max_unpacked_mb * 1024 * 1024
    package = inspect_package(data, manifest, max_unpacked=limit)
    app, version = await platform.store.write(
        repo.deploy(principal.organisation_id, manifest, package)
    )
    answer = {**app.to_json(), "version": version.version, "latest": version.to_json()}
    return JSONResponse(answer, status_code=201)


async def _upload(request: Request) -> dict[str, Any]:
    limit = settings().max_package_mb * 1024 * 1024 * 4 // 3 + 1024 * 1024
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"the deploy request exceeds {limit} bytes (a package of at most "
                f"{settings().max_package_mb} MB)"
            )
        chunks.append(chunk)
    body = parse_body(b"".join(chunks))
    if not isinstance(body, dict):
        raise BadRequest('the body must be {"doover_config": …, "package": "<base64>"}')
    return body


async def get_app(request: Request) -> Response:
    platform, principal = await admin(request)
    app = await platform.store.read(
        repo.require_app(principal.organisation_id, path_id(request, "app_id"))
    )
    latest = await platform.store.read(repo.get_version(app.id, app.latest_version))
    return JSONResponse({**app.to_json(), "latest": latest.to_json()})


async def delete_app(request: Request) -> Response:
    platform, principal = await admin(request)
    await platform.store.write(
        repo.delete_app(principal.organisation_id, path_id(request, "app_id"))
    )
    return Response(status_code=204)


async def list_versions(request: Request) -> Response:
    platform, principal = await admin(request)
    app = await platform.store.read(
        repo.require_app(principal.organisation_id, path_id(request, "app_id"))
    )
    versions = await platform.store.read(repo.list_versions(app.id))
    return JSONResponse([version.to_json() for version in versions])


# ---------------------------------------------------------------- installations


async def install(request: Request) -> Response:
    """``{"agent_id"?, "config"?, "app_key"?}``: the app on a device (a processor) or on
    the organisation (an integration; ``agent_id`` may be left out)."""
    platform, principal = await admin(request)
    organisation = principal.organisation_id
    app = await platform.store.read(repo.require_app(organisation, path_id(request, "app_id")))
    version = await platform.store.read(repo.get_version(app.id, app.latest_version))
    body = await read_object(request, optional=True)
    raw_agent = body.get("agent_id")
    if raw_agent is None and app.type == "PRO":
        raise BadRequest("agent_id is required: a processor is installed on a device")
    if raw_agent is None:
        organisation_row = await platform.store.read(get_organisation(organisation))
        raw_agent = organisation_row.agent_id if organisation_row else None
    agent = await platform.auth.agent(principal, to_id(raw_agent, "agent_id"))
    check_agent(app, agent)
    config = body.get("config", {})
    next_fire = check_deployment(app, version, config, now_ms())
    app_key = body.get("app_key", app.name)
    if not isinstance(app_key, str) or not NAME.match(app_key):
        raise BadRequest("app_key must start with a letter and hold only letters, digits, _ and -")
    request_ = InstallRequest(organisation, app, version, agent.id, app_key, config, next_fire)
    installation = await platform.store.write(repo.install(request_))
    wake(platform.store)
    return JSONResponse(installation.to_json(secrets=True), status_code=201)


async def list_installations(request: Request) -> Response:
    platform, principal = await admin(request)
    agent = request.query_params.get("agent_id")
    app_id = request.path_params.get("app_id") or request.query_params.get("app_id")
    found = await platform.store.read(
        repo.list_installations(
            principal.organisation_id,
            agent_id=None if agent is None else to_id(agent, "agent_id"),
            app_id=None if app_id is None else to_id(app_id, "app_id"),
        )
    )
    return JSONResponse([installation.to_json() for installation in found])


async def _installation(request: Request) -> tuple[Platform, Principal, Installation]:
    platform, principal = await admin(request)
    installation = await platform.store.read(
        repo.require_installation(principal.organisation_id, path_id(request, "installation_id"))
    )
    return platform, principal, installation


async def get_installation(request: Request) -> Response:
    _, _, installation = await _installation(request)
    return JSONResponse(installation.to_json(secrets=True))


async def update_installation(request: Request) -> Response:
    """``{"config": {…}}``: a new deployment config, validated like an install's."""
    platform, principal, installation = await _installation(request)
    app = await platform.store.read(
        repo.require_app(principal.organisation_id, installation.app_id)
    )
    version = await platform.store.read(repo.get_version(app.id, app.latest_version))
    body = await read_object(request)
    config = body.get("config")
    if not isinstance(config, dict):
        raise BadRequest('send {"config": {…}}: the new deployment config, a JSON object')
    next_fire = check_deployment(app, version, config, now_ms())
    updated = await platform.store.write(repo.update_config(installation, config, next_fire))
    return JSONResponse(updated.to_json(secrets=True))


async def uninstall(request: Request) -> Response:
    platform, principal, installation = await _installation(request)
    await platform.store.write(repo.uninstall(principal.organisation_id, installation.id))
    return Response(status_code=204)


async def invoke(request: Request) -> Response:
    """``on_manual_invoke`` with ``{"payload": …}``; ``?wait=SECONDS`` answers with the
    invocation once it has run (or 202 if it has not within that time)."""
    platform, principal, installation = await _installation(request)
    body = await read_object(request, optional=True)
    wait = query_int(request, "wait", 0, high=MAX_WAIT_SECONDS) or 0
    data = {
        "payload": body.get("payload"),
        "organisation_id": str(installation.organisation_id),
        "user_id": str(principal.agent_id),
    }
    delivery = new_delivery("on_manual_invoke", str(new_id()), data, installation.id)
    await platform.store.write(repo.enqueue([delivery], owner=None, lease_ms=0))
    wake(platform.store)
    queued = {"event_id": delivery.event_id, "installation_id": str(installation.id)}
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        found = await platform.store.read(
            repo.list_invocations(installation.id, event_id=delivery.event_id, limit=1)
        )
        if found:
            return JSONResponse({**queued, "invocation": found[0].to_json()})
        await asyncio.sleep(WAIT_POLL_SECONDS)
    return JSONResponse({**queued, "status": "QUEUED"}, status_code=202)


async def list_invocations(request: Request) -> Response:
    """The invocation log, newest first: ``?after=ID``, ``?before=ID``, ``?limit=N``,
    ``?event_id=…``."""
    platform, _, installation = await _installation(request)
    found = await platform.store.read(
        repo.list_invocations(
            installation.id,
            after_id=query_int(request, "after"),
            before_id=query_int(request, "before"),
            event_id=request.query_params.get("event_id"),
            limit=query_int(request, "limit", 50, low=1, high=1000) or 50,
        )
    )
    return JSONResponse([invocation.to_json() for invocation in found])


async def list_dead_letters(request: Request) -> Response:
    platform, _, installation = await _installation(request)
    found = await platform.store.read(repo.list_dead_letters(installation.id))
    return JSONResponse([letter.to_json() for letter in found])


async def retry_dead_letter(request: Request) -> Response:
    platform, _, installation = await _installation(request)
    letter_id = path_id(request, "dead_letter_id")
    delivery = await platform.store.write(repo.retry_dead_letter(installation.id, letter_id))
    wake(platform.store)
    return JSONResponse({"event_id": delivery.event_id, "status": "QUEUED"}, status_code=202)


async def delete_dead_letter(request: Request) -> Response:
    platform, _, installation = await _installation(request)
    letter_id = path_id(request, "dead_letter_id")
    await platform.store.write(repo.delete_dead_letter(installation.id, letter_id))
    return Response(status_code=204)


# ---------------------------------------------------------------- ingestion


_gates: dict[int, tuple[int, IngestionGate]] = {}


def gate_of(installation: Installation) -> IngestionGate:
    """The installation's gate, kept while its config is unchanged (the throttle's bucket
    lives in it)."""
    kept = _gates.get(installation.id)
    if kept is not None and kept[0] == installation.updated_ms:
        return kept[1]
    gate = IngestionGate.from_config(
        installation.ingestion,
        tokens=[installation.ingestion_token or ""],
        mini_tokens=[installation.mini_token or ""],
    )
    _gates[installation.id] = (installation.updated_ms, gate)
    return gate


async def ingest(request: Request) -> Response:
    """An integration's public ingestion URL: checks, then ``on_ingestion_endpoint``."""
    platform = platform_of(request)
    installation_id = path_id(request, "installation_id")
    try:
        installation = await platform.store.read(repo.require_installation(None, installation_id))
    except NotFound:
        raise NotFound(f"no ingestion endpoint {installation_id}") from None
    if installation.ingestion_token is None:
        raise NotFound(f"no ingestion endpoint {installation_id}")
    body = await read_body(request)
    remote = request.client.host if request.client is not None else ""
    headers = dict(request.headers)
    try:
        gate_of(installation).check(
            remote, headers, body, time.monotonic(), query=dict(request.query_params)
        )
    except IngestionThrottled as exc:
        answer = JSONResponse(exc.to_json(), status_code=exc.status)
        answer.headers["Retry-After"] = str(exc.retry_after)
        return answer
    data = {
        "ingestion_id": str(installation.id),
        "organisation_id": str(installation.organisation_id),
        "agent_id": str(installation.agent_id),
        "payload": wrap_body(body),
        "headers": {k: v for k, v in headers.items() if k not in CREDENTIAL_HEADERS},
    }
    delivery = new_delivery("on_ingestion_endpoint", str(new_id()), data, installation.id)
    await platform.store.write(repo.enqueue([delivery], owner=None, lease_ms=0))
    wake(platform.store)
    return JSONResponse({"event_id": delivery.event_id, "status": "QUEUED"}, status_code=202)


def routes() -> list[BaseRoute]:
    installation = "/api/apps/installations/{installation_id}"
    return [
        Route("/api/ingestion/{installation_id}", ingest, methods=["POST"]),
        Route("/api/apps/installations", list_installations, methods=["GET"]),
        Route(installation, get_installation, methods=["GET"]),
        Route(installation, update_installation, methods=["PATCH"]),
        Route(installation, uninstall, methods=["DELETE"]),
        Route(installation + "/invoke", invoke, methods=["POST"]),
        Route(installation + "/invocations", list_invocations, methods=["GET"]),
        Route(installation + "/dead-letters", list_dead_letters, methods=["GET"]),
        Route(
            installation + "/dead-letters/{dead_letter_id}/retry",
            retry_dead_letter,
            methods=["POST"],
        ),
        Route(
            installation + "/dead-letters/{dead_letter_id}", delete_dead_letter, methods=["DELETE"]
        ),
        Route("/api/apps", list_apps, methods=["GET"]),
        Route("/api/apps", deploy, methods=["POST"]),
        Route("/api/apps/{app_id}", get_app, methods=["GET"]),
        Route("/api/apps/{app_id}", delete_app, methods=["DELETE"]),
        Route("/api/apps/{app_id}/versions", list_versions, methods=["GET"]),
        Route("/api/apps/{app_id}/installations", list_installations, methods=["GET"]),
        Route("/api/apps/{app_id}/installations", install, methods=["POST"]),
    ]
