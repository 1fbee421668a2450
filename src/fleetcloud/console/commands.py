"""The commands pages: push a command to a device (protocol, parser script, payload,
metadata), the organisation's recent commands, and each command's status timeline —
all live, from the transitions every command publishes on its device's ``commands``
channel (``commands.lifecycle``).

Pushing goes through ``PusherService`` on the embedded bus, as the commands API does,
with the API's rules: write access to the device, and for a token that is not an admin's,
an MQTT topic inside the device's own namespace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from fleetcloud.api.auth import may_write
from fleetcloud.api.http import read_json
from fleetcloud.commands import lifecycle
from fleetcloud.commands.core.models import CommandMessage, CommandStatus
from fleetcloud.commands.lifecycle import COMMANDS_CHANNEL, StoredCommand
from fleetcloud.commands.scripts import ParserLibrary, Script, UnknownParser
from fleetcloud.commands.service import PusherService
from fleetcloud.connectors import topics
from fleetcloud.core.errors import ApiError, BadRequest, Forbidden, NotFound
from fleetcloud.core.jsonish import to_id
from fleetcloud.core.types import Agent, AgentKind, Principal
from fleetcloud.store import agents
from fleetcloud.store.agents import now_ms
from fleetcloud.store.ops import Fetch, Work, placeholders

from . import readings
from .configform import Unreadable, parse_json
from .pages import Reader, form_fields, json_response, page, render, wants_json
from .sessions import check_same_origin, platform_of

LIST_ROWS = 50
LIVE_DEVICES = 200
"""The list page follows the ``commands`` channels of at most this many devices live."""
CHUNK = 500
STATUSES = tuple(s.value for s in CommandStatus)
QOS_CHOICES = ("0", "1", "2")
ACK_CHOICES = ("", "broker", "device", "none")


@dataclass(slots=True)
class PushForm:
    """The push form's values (as typed) and what was wrong with them."""

    device: str = ""
    command_type: str = ""
    protocol: str = "mqtt"
    parser: str = "json_passthrough.py"
    payload: str = "{}"
    topic: str = ""
    qos: str = "1"
    retain: bool = False
    ack: str = ""
    path: str = ""
    confirmable: bool = True
    metadata: str = ""
    expires: str = ""
    errors: dict[str, str] = field(default_factory=dict)
    problem: str = ""

    @classmethod
    def of(cls, fields: Mapping[str, list[str]]) -> PushForm:
        def one(name: str, default: str = "") -> str:
            values = fields.get(name)
            return values[-1] if values else default

        return cls(
            device=one("device_id"),
            command_type=one("command_type").strip(),
            protocol=one("protocol", "mqtt"),
            parser=one("parser_script_ref"),
            payload=one("payload"),
            topic=one("topic").strip(),
            qos=one("qos", "1"),
            retain=one("retain") == "true",
            ack=one("ack"),
            path=one("path").strip(),
            confirmable=one("confirmable") == "true",
            metadata=one("metadata"),
            expires=one("expires_in").strip(),
        )


# ---------------------------------------------------------------- reads


def recent(agent_ids: Sequence[int], status: str | None, limit: int) -> Work[list[StoredCommand]]:
    """The newest commands of these devices (``commands_by_agent`` serves each chunk)."""
    found: list[StoredCommand] = []
    ids = list(agent_ids)
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        where = f"agent_id IN ({placeholders(len(chunk))})"
        params: list[Any] = list(chunk)
        if status is not None:
            where += " AND status = ?"
            params.append(status)
        rows = yield Fetch(
            f"SELECT {lifecycle.COLUMNS} FROM commands WHERE {where} "  # noqa: S608 - constant columns, "?" placeholders
            "ORDER BY seq DESC LIMIT ?",
            (*params, limit),
        )
        found.extend(lifecycle.from_row(row) for row in rows)
    found.sort(key=lambda c: c.seq, reverse=True)
    return found[:limit]


async def writable_devices(request: Request, principal: Principal) -> list[Agent]:
    """The devices the reader may send commands to, by name."""
    store = platform_of(request).store
    found = await store.read(agents.list_agents(principal.organisation_id, AgentKind.DEVICE))
    mine = [a for a in found if may_write(principal, a)]
    return sorted(mine, key=lambda a: (a.name.lower(), a.id))


async def device_of(request: Request, principal: Principal, raw_id: object) -> Agent:
    """A device of the reader's organisation that the reader may command (404 / 403)."""
    agent = await platform_of(request).auth.agent(principal, to_id(raw_id, "device id"))
    if agent.kind is not AgentKind.DEVICE:
        raise NotFound(f"agent {agent.id} is not a device")
    if not may_write(principal, agent):
        raise Forbidden("Your token may not send commands to this device.")
    return agent


async def parsers(request: Request, organisation_id: int) -> list[Script]:
    return await ParserLibrary(platform_of(request).store).available(organisation_id)


# ---------------------------------------------------------------- the list and the form


@dataclass(frozen=True, slots=True)
class Filters:
    device: str = ""
    status: str = ""

    @classmethod
    def of(cls, request: Request) -> Filters:
        status = request.query_params.get("status", "")
        return cls(
            device=request.query_params.get("device", "").strip(),
            status=status if status in STATUSES else "",
        )


async def show(
    request: Request, reader: Reader, form: PushForm | None = None, *, status: int = 200
) -> Response:
    principal = reader.principal
    devices = await writable_devices(request, principal)
    filters = Filters.of(request)
    chosen = [d for d in devices if str(d.id) == filters.device] if filters.device else devices
    store = platform_of(request).store
    found = await store.read(recent([d.id for d in chosen], filters.status or None, LIST_ROWS))
    if form is None:
        form = PushForm(device=filters.device or (str(devices[0].id) if devices else ""))
    context = {
        "reader": reader,
        "section": "commands",
        "title": "Commands",
        "devices": devices,
        "names": {d.id: d.name for d in devices},
        "commands": found,
        "filters": filters,
        "statuses": STATUSES,
        "form": form,
        "parsers": await parsers(request, principal.organisation_id),
        "qos_choices": QOS_CHOICES,
        "ack_choices": ACK_CHOICES,
        "command_topic": topics.command_topic,
        "live": {
            "devices": [str(d.id) for d in chosen[:LIVE_DEVICES]],
            "names": {str(d.id): d.name for d in devices},
            "status": filters.status,
        },
        "now": now_ms(),
    }
    return render(request, "commands.html", context, status=status)


@page
async def commands_page(request: Request, reader: Reader) -> Response:
    return await show(request, reader)


def metadata_of(form: PushForm, device_id: int) -> dict[str, Any]:
    """The command's metadata: the JSON the form was given, then the protocol's fields
    over it. An MQTT command without a topic goes to the device's own command topic."""
    extra: Any = {}
    if form.metadata.strip():
        try:
            extra = parse_json(form.metadata)
        except Unreadable as exc:
            form.errors["metadata"] = str(exc)
        if not isinstance(extra, dict):
            form.errors.setdefault("metadata", "metadata must be a JSON object")
            extra = {}
    if form.protocol == "mqtt":
        extra["topic"] = form.topic or extra.get("topic") or topics.command_topic(device_id)
        extra["qos"] = int(form.qos) if form.qos in QOS_CHOICES else form.qos
        extra["retain"] = form.retain
        if form.ack:
            extra["ack"] = form.ack
    else:
        if form.path:
            extra["path"] = form.path
        extra["confirmable"] = form.confirmable
    return dict(extra)


def payload_of(form: PushForm) -> dict[str, Any]:
    if not form.payload.strip():
        return {}
    try:
        payload = parse_json(form.payload)
    except Unreadable as exc:
        form.errors["payload"] = str(exc)
        return {}
    if not isinstance(payload, dict):
        form.errors["payload"] = 'the payload must be a JSON object, such as {"level": 80}'
        return {}
    return payload


def expiry_of(form: PushForm) -> datetime | None:
    if not form.expires:
        return None
    if not form.expires.isdigit() or not 1 <= int(form.expires) <= 30 * 86_400:
        form.errors["expires_in"] = "give a whole number of seconds, 1 to 2592000 (30 days)"
        return None
    return datetime.now(UTC) + timedelta(seconds=int(form.expires))


async def command_of(request: Request, principal: Principal, form: PushForm) -> CommandMessage:
    """The form as a ``CommandMessage`` (an ``ApiError`` with the reason if it is not one)."""
    agent = await device_of(request, principal, form.device or "0")
    payload = payload_of(form)
    metadata = metadata_of(form, agent.id)
    expires_at = expiry_of(form)
    if form.errors:
        raise BadRequest("; ".join(f"{k}: {v}" for k, v in form.errors.items()))
    try:
        await ParserLibrary(platform_of(request).store).resolve(
            principal.organisation_id, form.parser
        )
    except UnknownParser as exc:
        form.errors["parser_script_ref"] = exc.message
        raise BadRequest(exc.message) from exc
    command = CommandMessage(
        device_id=str(agent.id),
        command_type=form.command_type,
        payload=payload,
        protocol=form.protocol,
        parser_script_ref=form.parser,
        metadata=metadata,
        expires_at=expires_at,
    )
    topic = command.metadata.get("topic")
    mqtt = command.protocol == "mqtt" and topic is not None
    if mqtt and not principal.is_admin and not topics.owns(agent.id, str(topic)):
        raise Forbidden(f"the topic must be under fleetcloud/{agent.id}/ for this token")
    return command


def as_text(value: Any) -> str:
    """A JSON value as the form would have sent it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return value if isinstance(value, str) else readings.compact(value)


async def form_of(request: Request) -> PushForm:
    """The push form from a browser's form, or JSON from the page's script."""
    if request.headers.get("content-type", "").startswith("application/json"):
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadRequest("send the command's fields as a JSON object")
        return PushForm.of({k: [as_text(v)] for k, v in body.items()})
    return PushForm.of(await form_fields(request))


@page
async def push(request: Request, reader: Reader) -> Response:
    """Push a command: recorded ``QUEUED`` and put on the bus in one transaction; then
    its page. A bad field brings the form back with the reason and the typed values."""
    check_same_origin(request)
    form = await form_of(request)
    try:
        command = await command_of(request, reader.principal, form)
        pusher = PusherService(platform=platform_of(request), author_id=reader.principal.agent_id)
        stored = await pusher.enqueue(command)
    except ApiError as exc:
        if wants_json(request) or exc.status in (403, 404):
            raise
        form.problem = exc.message
        return await show(request, reader, form, status=exc.status)
    if wants_json(request):
        body = {"request_id": stored.request_id, "status": stored.status.value}
        return json_response(request, body, 202)
    return RedirectResponse(f"/commands/{quote(stored.request_id, safe='')}", 303)


# ---------------------------------------------------------------- one command


@page
async def command_page(request: Request, reader: Reader) -> Response:
    store = platform_of(request).store
    request_id = request.path_params["request_id"]
    command = await store.read(lifecycle.get(request_id))
    if command is None or command.organisation_id != reader.principal.organisation_id:
        raise NotFound(f"command {request_id!r} does not exist")
    agent = await device_of(request, reader.principal, command.agent_id)
    history = await store.read(lifecycle.history(request_id))
    if wants_json(request):
        body = {**command.to_json(), "history": [h.to_json() for h in history]}
        return json_response(request, body)
    context = {
        "reader": reader,
        "section": "commands",
        "title": f"{command.command_type} to {agent.name}",
        "command": command,
        "device": agent,
        "history": history,
        "final": command.status.is_final,
        "live": {
            "request_id": command.request_id,
            "device": str(agent.id),
            "channel": COMMANDS_CHANNEL,
            "seen": len(history),
        },
        "now": now_ms(),
    }
    return render(request, "commands_detail.html", context)
