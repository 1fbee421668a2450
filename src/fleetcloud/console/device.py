"""A device's page: its UI (from ``ui_state``), alerts, tags, channels with their live
aggregates, and a channel's history with a chart of its numeric fields — plus the
endpoints the page's script calls: the UI fragment, the chart's series, and sending a
user's input to ``ui_cmds``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from fleetcloud.api.auth import may_read, may_write
from fleetcloud.api.http import query_int, read_object
from fleetcloud.core.errors import BadRequest, Conflict, Forbidden, NotFound
from fleetcloud.core.ids import timestamp_ms
from fleetcloud.core.jsonish import to_id
from fleetcloud.core.merge import pick
from fleetcloud.core.types import Agent, Channel, Message, Principal
from fleetcloud.jobs import devices as fleet
from fleetcloud.jobs.model import Group
from fleetcloud.store import channels as repo
from fleetcloud.store.agents import now_ms
from fleetcloud.store.channels import PublishItem

from . import layout, readings
from .connection import UNKNOWN, ConnectionState, connection_state
from .pages import Reader, first, form_fields, json_response, page, render, wants_json
from .sessions import check_same_origin, platform_of

UI_STATE, UI_CMDS, TAGS, ALERTS = "ui_state", "ui_cmds", "tag_values", "significantEvent"
CONNECTION = "doover_connection"
NOT_IN_PICKER = frozenset({UI_STATE, CONNECTION, "deployment_config"})
"""Channels whose history is bookkeeping: not offered in the history's channel picker."""
HISTORY_ROWS = 20
ALERT_ROWS = 10
SERIES_LIMIT = 300
MAX_SERIES_FIELDS = 8


@dataclass(slots=True)
class DeviceView:
    agent: Agent
    channels: dict[str, Channel]  # the ones the reader may see, by name
    connection: ConnectionState
    groups: list[Group]
    can_write: bool

    def aggregate(self, name: str) -> Any:
        channel = self.channels.get(name)
        return channel.aggregate if channel is not None else None


@dataclass(frozen=True, slots=True)
class Alert:
    id: int
    ms: int
    text: str
    app_key: str | None
    level: str | None


async def agent_of(request: Request, principal: Principal) -> Agent:
    agent_id = to_id(request.path_params["agent_id"], "device id")
    return await platform_of(request).auth.agent(principal, agent_id)


async def load(request: Request, principal: Principal) -> DeviceView:
    store = platform_of(request).store
    agent = await agent_of(request, principal)
    found = await store.read(repo.list_channels(agent.id))
    channels = {c.name: c for c in found if may_read(principal, agent, c)}
    groups = await store.read(fleet.list_groups(principal.organisation_id))
    connection = channels.get(CONNECTION)
    state = connection_state(connection.aggregate, now_ms()) if connection else UNKNOWN
    member_of = [g for g in groups if agent.id in g.devices]
    return DeviceView(agent, channels, state, member_of, may_write(principal, agent))


def history_channel(view: DeviceView, requested: str | None) -> Channel | None:
    """The channel whose history is shown: the one asked for, else the most recently
    updated data channel with numbers to chart, else any data channel."""
    if requested:
        if requested not in view.channels:
            raise NotFound(f"this device has no channel {requested!r} you can read")
        return view.channels[requested]
    data = [c for c in view.channels.values() if not readings.is_reserved(c.name)]
    charted = [c for c in data if readings.numeric_fields(c.aggregate)]
    pool = charted or data
    return max(pool, key=lambda c: c.last_updated or 0, default=None)


def tag_rows(aggregate: Any) -> list[tuple[str, str, str]]:
    """``tag_values`` as (app, tag, value) rows; tags starting with ``_`` are the SDK's
    own bookkeeping and are left out."""
    if not isinstance(aggregate, dict):
        return []
    rows = []
    for app_key, tags in aggregate.items():
        if isinstance(tags, dict):
            rows += [(app_key, k, readings.scalar(v)) for k, v in tags.items() if k[:1] != "_"]
    return rows


def alert_of(message: Message) -> Alert:
    data = message.data
    if isinstance(data, dict):
        text = data.get("message")
        app_key, level = data.get("app_key"), data.get("level") or data.get("severity")
        return Alert(
            message.id,
            timestamp_ms(message.id),
            text if isinstance(text, str) else readings.compact(data),
            app_key if isinstance(app_key, str) else None,
            level if isinstance(level, str) else None,
        )
    return Alert(message.id, timestamp_ms(message.id), readings.scalar(data), None, None)


async def recent(
    request: Request, channel: Channel | None, limit: int, before: int | None = None
) -> list[Message]:
    if channel is None:
        return []
    store = platform_of(request).store
    return await store.read(repo.list_messages(channel, before=before, limit=limit))


def ui_context(view: DeviceView) -> dict[str, Any]:
    return {
        "apps": layout.applications(view.aggregate(UI_STATE), view.aggregate(UI_CMDS)),
        "device": view.agent,
        "can_write": view.can_write,
    }


def live_data(view: DeviceView, history: Channel | None, fields: list[str]) -> dict[str, Any]:
    """What the page's script needs, embedded in the page as JSON."""
    return {
        "device": str(view.agent.id),
        "channels": sorted(view.channels),
        "history": history.name if history else None,
        "fields": fields,
        "ui_state": view.aggregate(UI_STATE),
        "ui_cmds": view.aggregate(UI_CMDS),
        "can_write": view.can_write,
    }


@page
async def device_page(request: Request, reader: Reader) -> Response:
    view = await load(request, reader.principal)
    history = history_channel(view, request.query_params.get("channel"))
    before = query_int(request, "before")
    messages = await recent(request, history, HISTORY_ROWS, before)
    alerts = await recent(request, view.channels.get(ALERTS), ALERT_ROWS)
    fields = readings.numeric_fields(history.aggregate) if history else []
    channels = sorted(view.channels.values(), key=lambda c: (readings.is_reserved(c.name), c.name))
    context = {
        **ui_context(view),
        "reader": reader,
        "section": "devices",
        "title": view.agent.name,
        "view": view,
        "history": history,
        "history_choices": [c for c in channels if c.name not in NOT_IN_PICKER],
        "messages": messages,
        "paged": before is not None,
        "older": messages[-1].id if len(messages) == HISTORY_ROWS else None,
        "fields": fields,
        "alerts": [alert_of(m) for m in alerts],
        "tags": tag_rows(view.aggregate(TAGS)),
        "channels": channels,
        "live": {**live_data(view, history, fields), "paged": before is not None},
        "sent": request.query_params.get("sent"),
        "now": now_ms(),
        "timestamp_ms": timestamp_ms,
        "is_reserved": readings.is_reserved,
    }
    return render(request, "device.html", context)


@page
async def device_ui(request: Request, reader: Reader) -> Response:
    """The UI section alone, for the page's script when the layout changes shape."""
    view = await load(request, reader.principal)
    return render(request, "device_ui.html", ui_context(view))


@page
async def device_series(request: Request, reader: Reader) -> Response:
    """``{"channel", "timestamps": [ms…], "values": {field: [number|null…]}}``, oldest first."""
    agent = await agent_of(request, reader.principal)
    name = request.query_params.get("channel", "")
    fields = request.query_params.getlist("field")[:MAX_SERIES_FIELDS]
    store = platform_of(request).store
    channel = await store.read(repo.get_channel(agent.id, name)) if name else None
    if channel is None or not may_read(reader.principal, agent, channel):
        raise NotFound(f"this device has no channel {name!r} you can read")
    limit = query_int(request, "limit", SERIES_LIMIT, low=1, high=5 * SERIES_LIMIT)
    found = await recent(request, channel, limit or SERIES_LIMIT)
    found.reverse()

    def number(value: Any) -> Any:
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    body = {
        "channel": channel.name,
        "timestamps": [timestamp_ms(m.id) for m in found],
        "values": {f: [number(pick(m.data, f)) for m in found] for f in fields},
    }
    return json_response(request, body)


async def command_input(request: Request) -> tuple[str, Any, bool]:
    """``(cmdKey, raw value, confirmed)`` from a JSON body or a form."""
    if request.headers.get("content-type", "").startswith("application/json"):
        body = await read_object(request)
        key = body.get("key")
        return (
            (key if isinstance(key, str) else ""),
            body.get("value"),
            body.get("confirmed") is True,
        )
    fields = await form_fields(request)
    values = fields.get("value") or [""]
    return first(fields, "key"), values[-1], first(fields, "confirmed") == "yes"


@page
async def device_command(request: Request, reader: Reader) -> Response:
    """A user's input: written as one message ``{cmdKey: value}`` to ``ui_cmds``, which
    appends it to the history (processors subscribed to ``ui_cmds`` are invoked by it)
    and merges it into the aggregate, in one transaction."""
    check_same_origin(request)
    platform = platform_of(request)
    agent = await agent_of(request, reader.principal)
    if not may_write(reader.principal, agent):
        raise Forbidden("Your token may read this device but not send it commands.")
    key, raw, confirmed = await command_input(request)
    ui_state = await platform.store.read(repo.get_channel(agent.id, UI_STATE))
    item = layout.find_interaction(ui_state.aggregate if ui_state else None, key)
    if item is None:
        raise NotFound(f"this device's UI has no control {key!r}")
    value = layout.command_value(item, raw)
    if item.spec.get("requiresConfirm") and not confirmed:
        if wants_json(request):
            raise Conflict(f"{item.label} needs confirming: send confirmed=true")
        context = {
            "reader": reader,
            "section": "devices",
            "title": "Confirm",
            "device": agent,
            "item": item,
            "value": raw,
        }
        return render(request, "confirm.html", context)
    [result] = await platform.store.publish(
        [PublishItem(agent.id, UI_CMDS, {item.cmd_key: value}, reader.principal.agent_id)]
    )
    if result.message_id is None:
        raise BadRequest(result.error or "the command was refused")
    platform.metrics.messages_published.inc()
    if not wants_json(request):
        return RedirectResponse(f"/devices/{agent.id}?sent={quote(item.label)}#ui", 303)
    body = {
        "key": item.cmd_key,
        "value": value,
        "label": item.label,
        "text": layout.display(item.spec, value) if item.type != "uiAction" else "pressed",
        "message_id": str(result.message_id),
    }
    return json_response(request, body)
