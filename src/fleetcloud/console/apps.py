"""The apps pages: deployed apps and their installations; an installation's config form
(generated from the app's JSON Schema, validated before it is saved), its invocation log
(live), and a button that invokes ``on_manual_invoke``.

Managing apps takes an organisation admin, as in the apps API; the pages use the same
units of work (``apps.repo``) and checks (``apps.installations``) as the API does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from fleetcloud.api.http import query_int, read_body, read_object
from fleetcloud.apps import repo
from fleetcloud.apps.dispatcher import wake
from fleetcloud.apps.installations import check_deployment
from fleetcloud.apps.model import App, Installation, Invocation, Version
from fleetcloud.core.errors import BadRequest, Forbidden, ValidationFailed
from fleetcloud.core.ids import new_id
from fleetcloud.core.jsonish import to_id
from fleetcloud.core.types import Agent
from fleetcloud.store import agents
from fleetcloud.store.agents import now_ms
from fleetcloud.store.ops import Work

from . import configform
from .configform import Field, Unreadable
from .pages import Reader, json_response, page, render, wants_json
from .sessions import check_same_origin, platform_of

LOG_ROWS = 20
MAX_FORM_FIELDS = 2 * configform.MAX_FIELDS + 16
MAX_PAYLOAD_CHARS = 64 * 1024


@dataclass(frozen=True, slots=True)
class Row:
    """An installation as the lists show it."""

    installation: Installation
    app: App
    agent: Agent | None
    last: Invocation | None


@dataclass(slots=True)
class Form:
    """The config form: its fields, and what was wrong with the last submission."""

    fields: list[Field]
    problems: list[str]
    saved: bool = False

    @property
    def invalid(self) -> bool:
        return bool(self.problems) or any(f.error for f in configform.walk(self.fields))


def require_admin(reader: Reader) -> None:
    if not reader.principal.is_admin:
        raise Forbidden("Only an organisation admin may see and manage apps.")


def last_invocations(installation_ids: Sequence[int]) -> Work[dict[int, Invocation]]:
    """Each installation's latest invocation, in one unit of work (an indexed read each)."""
    found: dict[int, Invocation] = {}
    for installation_id in installation_ids:
        latest = yield from repo.list_invocations(installation_id, limit=1)
        if latest:
            found[installation_id] = latest[0]
    return found


async def rows_for(
    request: Request, reader: Reader, apps: Sequence[App], app_id: int | None = None
) -> list[Row]:
    store = platform_of(request).store
    organisation = reader.principal.organisation_id
    found = await store.read(repo.list_installations(organisation, app_id=app_id))
    by_app = {app.id: app for app in apps}
    by_agent = {a.id: a for a in await store.read(agents.list_agents(organisation))}
    last = await store.read(last_invocations([i.id for i in found]))
    return [
        Row(i, by_app[i.app_id], by_agent.get(i.agent_id), last.get(i.id))
        for i in found
        if i.app_id in by_app
    ]


@page
async def apps_page(request: Request, reader: Reader) -> Response:
    require_admin(reader)
    store = platform_of(request).store
    apps = await store.read(repo.list_apps(reader.principal.organisation_id))
    rows = await rows_for(request, reader, apps)
    counts = {app.id: sum(r.app.id == app.id for r in rows) for app in apps}
    context = {
        "reader": reader,
        "section": "apps",
        "title": "Apps",
        "apps": apps,
        "rows": rows,
        "counts": counts,
        "now": now_ms(),
    }
    return render(request, "apps.html", context)


@page
async def app_page(request: Request, reader: Reader) -> Response:
    require_admin(reader)
    store = platform_of(request).store
    app_id = to_id(request.path_params["app_id"], "app id")
    app = await store.read(repo.require_app(reader.principal.organisation_id, app_id))
    versions = await store.read(repo.list_versions(app.id))
    rows = await rows_for(request, reader, [app], app.id)
    context = {
        "reader": reader,
        "section": "apps",
        "title": app.display_name,
        "app": app,
        "versions": versions,
        "latest": next((v for v in versions if v.version == app.latest_version), None),
        "rows": rows,
        "now": now_ms(),
    }
    return render(request, "apps_app.html", context)


# ---------------------------------------------------------------- an installation


async def installation_of(request: Request, reader: Reader) -> tuple[Installation, App, Version]:
    require_admin(reader)
    store = platform_of(request).store
    organisation = reader.principal.organisation_id
    installation_id = to_id(request.path_params["installation_id"], "installation id")
    installation = await store.read(repo.require_installation(organisation, installation_id))
    app = await store.read(repo.require_app(organisation, installation.app_id))
    version = await store.read(repo.get_version(app.id, app.latest_version))
    return installation, app, version


async def invocations(
    request: Request, installation: Installation, before: int | None = None
) -> list[Invocation]:
    store = platform_of(request).store
    found = repo.list_invocations(installation.id, before_id=before, limit=LOG_ROWS)
    return await store.read(found)


async def show_installation(
    request: Request, reader: Reader, form: Form | None = None, *, status: int = 200
) -> Response:
    installation, app, version = await installation_of(request, reader)
    store = platform_of(request).store
    agent = await store.read(agents.get_agent(installation.agent_id))
    if form is None:
        form = Form(configform.fields(version.config_schema, installation.deployment_config), [])
        form.saved = request.query_params.get("saved") == "1"
    before = query_int(request, "before")
    log = await invocations(request, installation, before)
    context = {
        "reader": reader,
        "section": "apps",
        "title": f"{app.display_name} on {agent.name if agent else installation.agent_id}",
        "installation": installation,
        "app": app,
        "version": version,
        "agent": agent,
        "form": form,
        "log": log,
        "paged": before is not None,
        "older": log[-1].id if len(log) == LOG_ROWS else None,
        "invoked": request.query_params.get("invoked"),
        "live": {
            "installation": str(installation.id),
            "agent": str(installation.agent_id),
            "channel": repo.summary_channel(app.id),
            "paged": before is not None,
        },
        "now": now_ms(),
    }
    return render(request, "apps_installation.html", context, status=status)


@page
async def installation_page(request: Request, reader: Reader) -> Response:
    return await show_installation(request, reader)


@page
async def invocation_rows(request: Request, reader: Reader) -> Response:
    """The invocation log's rows alone, for the page's script when a new one lands."""
    installation, _, _ = await installation_of(request, reader)
    log = await invocations(request, installation)
    return render(request, "apps_invocations.html", {"log": log, "now": now_ms()})


async def submitted(request: Request) -> dict[str, list[str]]:
    """The config form's fields (more of them than other console forms have)."""
    body = (await read_body(request)).decode("utf-8", "replace")
    try:
        return parse_qs(body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError as exc:
        raise BadRequest(f"the form could not be read: {exc}") from exc


@page
async def save_config(request: Request, reader: Reader) -> Response:
    """The config form, submitted: checked against the app's schema and the platform's
    own keys, then saved as the API's ``PATCH`` would; or shown again with each problem
    next to its field (422), the typed values kept."""
    check_same_origin(request)
    installation, app, version = await installation_of(request, reader)
    schema = version.config_schema
    fields_in = await submitted(request)
    config, unreadable = configform.read(schema, fields_in, installation.deployment_config)
    errors = configform.field_errors(schema, config)
    for path, message in unreadable.items():
        errors[path] = [message]
    problems: list[str] = []
    next_fire = None
    if not errors:
        try:
            next_fire = check_deployment(app, version, config, now_ms())
        except ValidationFailed as exc:
            problems.append(exc.message)
    if errors or problems:
        shown = configform.fields(schema, installation.deployment_config)
        keep_typed(shown, fields_in)
        problems = configform.attach(shown, errors) + problems
        return await show_installation(request, reader, Form(shown, problems), status=422)
    store = platform_of(request).store
    await store.write(repo.update_config(installation, config, next_fire))
    return RedirectResponse(f"/apps/installations/{installation.id}?saved=1#config", 303)


def keep_typed(shown: Sequence[Field], form: dict[str, list[str]]) -> None:
    """Show what the user typed, not the stored values, when the form comes back."""
    for item in configform.walk(shown):
        if item.kind == "object":
            continue
        values = form.get(item.name)
        if values is not None:
            item.value = values[-1]
        elif item.kind == "boolean":
            item.value = ""


async def invoke_payload(request: Request) -> Any:
    """The manual invocation's payload: JSON ``{"payload": …}``, or a form's ``payload``
    field holding JSON (empty: no payload)."""
    if request.headers.get("content-type", "").startswith("application/json"):
        return (await read_object(request, optional=True)).get("payload")
    text = ((await submitted(request)).get("payload") or [""])[-1]
    if len(text) > MAX_PAYLOAD_CHARS:
        raise BadRequest(f"the payload is longer than {MAX_PAYLOAD_CHARS} characters")
    if not text.strip():
        return None
    try:
        return configform.parse_json(text)
    except Unreadable as exc:
        raise BadRequest(f"The payload was not sent: {exc}") from exc


@page
async def invoke(request: Request, reader: Reader) -> Response:
    """Queue ``on_manual_invoke`` for the installation, as the API's invoke does; the
    invocation log shows it once a worker has run it."""
    check_same_origin(request)
    installation, _, _ = await installation_of(request, reader)
    payload = await invoke_payload(request)
    data = {
        "payload": payload,
        "organisation_id": str(installation.organisation_id),
        "user_id": str(reader.principal.agent_id),
    }
    delivery = repo.new_delivery("on_manual_invoke", str(new_id()), data, installation.id)
    store = platform_of(request).store
    await store.write(repo.enqueue([delivery], owner=None, lease_ms=0))
    wake(store)
    if not wants_json(request):
        target = f"/apps/installations/{installation.id}?invoked={delivery.event_id}#log"
        return RedirectResponse(target, 303)
    body = {"event_id": delivery.event_id, "status": "QUEUED"}
    return json_response(request, body, 202)
